"""TransferService: the one transfer service of an engine's initialization.

The engine makes it when it first needs one (llm.ListenIpInfo at Initialize, or the first
transfer call) and closes it at Finalize. The C++ API's calls (_cpp_api) and the drop-in's both
act through it: one TransferAgent over the engine's one CacheRegistry, its listeners, one set of
links, and the rank-table links (comms) the drop-in's link() makes over them.
"""
import weakref

from ._agent import TransferAgent
from ._rank_links import RankTableLinks
from ._same_host import SameHostMemory


def _close(rank_table_links, agent):
    rank_table_links.close()   # no comm links anew while the agent ends its links
    agent.close()


class TransferService:
    """One initialization's agent over its registry, and its rank-table links. Both are closed with
    the engine (Finalize, or the engine dropped without it); the service holds the engine only weakly."""

    def __init__(self, engine, options, registry):
        """options: the engine's parsed _options.TransferOptions; registry: the engine's CacheRegistry."""
        self.registry = registry
        same_host = SameHostMemory(engine) if options.transfer_path == "auto" else None
        self.agent = TransferAgent(self.registry, engine.cluster_id, listen_ip_info=options.listen_ip_info,
                                   protocol=options.protocol, device_name=options.device_name,
                                   sync_timeout_ms=options.sync_timeout_ms, link_secret=options.link_secret,
                                   same_host=same_host, mooncake_in_process=options.mooncake_in_process,
                                   rdma_traffic_class=options.rdma_traffic_class,
                                   rdma_service_level=options.rdma_service_level)
        self.rank_table_links = RankTableLinks(self.agent, options.link_total_s, options.rank_table_port)
        self._closer = weakref.finalize(engine, _close, self.rank_table_links, self.agent)

    def close(self):
        self._closer()

    def abandon(self):
        """In a forked child: the links, threads and Mooncake engine are the parent's; never close them."""
        self._closer.detach()
