"""Rank-table links: CANN's LLMDataDist.link, query_register_mem_status and unlink over llmdd's links.

A comm (CANN's comm_link_manager.cc) names two to four clusters, the rank of each, and a rank
table that says where each rank is (_rank_table). llmdd links this cluster with each other
cluster of the comm by an ordinary link of the agent's (link secret, keepalive and every rule of
docs/transfer.md): of each pair, the lower rank listens on its endpoint and the higher one links
to it from its own device_ip, again every RETRY_SECONDS until the comm's deadline, because the
other side may call link() later. link() answers the comm's id at once; the comm is PREPARING
until every other cluster of it is linked (OK) or the deadline passed (FAILED), and stays so.

Two comms may name one cluster: their link is made once and stays until neither names it.
unlink() ends a comm's preparation and, on this side only, the links no other comm names, as
CANN's unlink destroys its comm; the peer's side of each ends with the connection.
"""
import contextlib
import logging
import socket
import threading
import time

from .._desc import LLMStatusCode
from .._status import LLMException
from .._transfer_types import REGISTER_MEMORY_STATUSES
from ._agent import LinkTarget
from ._rank_table import RankTableError, rank_endpoints
from ._sockets import track

log = logging.getLogger("llmdd.transfer")

OK, PREPARING, FAILED = (REGISTER_MEMORY_STATUSES[name] for name in ("OK", "PREPARING", "FAILED"))
MAX_COMMS = 512                   # comm_link_manager.cc kMaxLinkNum
RETRY_SECONDS = 0.1               # between two attempts to reach a peer that does not listen yet
CONNECT_SECONDS = 1.0             # one attempt's connect, which nothing can cut short
JOIN_SECONDS = CONNECT_SECONDS + 1.0   # what ending a preparation waits for its thread
UNLINK_TIMEOUT_MS = 1000          # unused by a forced unlink, which tells no peer
SUCCESS = LLMStatusCode.LLM_SUCCESS


class _Comm:
    """One comm: its name; this cluster's endpoint and whether it listens there; per other
    cluster, that cluster's endpoint and whether this side links to it; its status; and its
    preparation: the thread, the event that ends it, the connection of the attempt under way."""

    __slots__ = ("name", "endpoint", "listens", "peers", "status", "ending", "dialing", "thread")

    def __init__(self, name, endpoint, listens, peers):
        self.name = name
        self.endpoint = endpoint
        self.listens = listens
        self.peers = peers
        self.status = PREPARING
        self.ending = threading.Event()
        self.dialing = None   # (remote cluster id, socket) of the attempt under way
        self.thread = None


class RankTableLinks:
    """The comms of one transfer agent (CANN's CommLinkManager): ids from 1, at most MAX_COMMS at
    a time. link_total_s: how long a comm's links may take (llm.LinkTotalTime); rank_table_port:
    where a rank without a device_port listens, plus its device_id (llmdd.RankTablePort)."""

    def __init__(self, agent, link_total_s, rank_table_port):
        self._agent = agent
        self._link_total_s = link_total_s
        self._rank_table_port = rank_table_port
        self._lock = threading.Lock()
        self._comms = {}         # comm id -> _Comm
        self._next_comm_id = 1
        self._holders = {}       # remote cluster id -> how many comms name it
        self._closed = False

    def link(self, comm_name, cluster_rank_info, rank_table):
        """(status, comm id or None) of a comm of `cluster_rank_info` ({cluster id: rank}) over
        `rank_table` (JSON): LLM_PARAM_INVALID when this cluster is not in it or MAX_COMMS are
        linked, LLM_ALREADY_LINK for a name a comm has, LLM_LINK_FAILED for a table llmdd cannot
        use or an endpoint this side cannot listen on."""
        local_rank = cluster_rank_info.get(self._agent.cluster_id)
        if local_rank is None:
            log.warning("comm %r: this cluster (%d) is not in cluster_rank_info", comm_name, self._agent.cluster_id)
            return LLMStatusCode.LLM_PARAM_INVALID, None
        with self._lock:
            refusal = self._refusal(comm_name)
        if refusal is not None:
            return refusal, None
        try:
            if len(set(cluster_rank_info.values())) < len(cluster_rank_info):
                raise RankTableError(f"two clusters of {cluster_rank_info} have one rank")
            endpoints = rank_endpoints(rank_table, cluster_rank_info.values(), self._rank_table_port)
        except RankTableError as error:
            log.warning("comm %r: %s", comm_name, error)
            return LLMStatusCode.LLM_LINK_FAILED, None
        peers = {cluster: (endpoints[rank], rank < local_rank)
                 for cluster, rank in cluster_rank_info.items() if cluster != self._agent.cluster_id}
        comm = _Comm(comm_name, endpoints[local_rank], max(cluster_rank_info.values()) > local_rank, peers)
        if comm.listens:
            try:
                self._agent.listeners.open(*comm.endpoint)
            except LLMException as error:
                log.warning("comm %r: %s", comm_name, error)
                return LLMStatusCode.LLM_LINK_FAILED, None
        with self._lock:
            refusal = self._refusal(comm_name)
            if refusal is None:
                comm_id, self._next_comm_id = self._next_comm_id, self._next_comm_id + 1
                self._comms[comm_id] = comm
                for cluster in peers:
                    self._holders[cluster] = self._holders.get(cluster, 0) + 1
                # Started before anyone can unlink the comm, which joins it.
                comm.thread = threading.Thread(target=self._prepare, name=f"llmdd-comm-{comm_id}", daemon=True,
                                               args=(comm, time.monotonic() + self._link_total_s))
                comm.thread.start()
        if refusal is not None:
            if comm.listens:
                self._agent.listeners.release(comm.endpoint)
            return refusal, None
        return SUCCESS, comm_id

    def _refusal(self, comm_name):
        """The status that refuses a new comm of this name now, or None."""
        if self._closed:
            return LLMStatusCode.LLM_FAILED
        if len(self._comms) >= MAX_COMMS:
            log.warning("comm %r: %d comms are linked, the most there may be", comm_name, MAX_COMMS)
            return LLMStatusCode.LLM_PARAM_INVALID
        if any(comm.name == comm_name for comm in self._comms.values()):
            return LLMStatusCode.LLM_ALREADY_LINK
        return None

    def has_comms(self):
        """Whether any comm, linked or being linked, is there (SetRole refuses then)."""
        with self._lock:
            return bool(self._comms)

    def status(self, comm_id):
        """(status, OK, PREPARING or FAILED): LLM_NOT_YET_LINK for a comm not linked."""
        with self._lock:
            comm = self._comms.get(comm_id)
            return (LLMStatusCode.LLM_NOT_YET_LINK, None) if comm is None else (SUCCESS, comm.status)

    def unlink(self, comm_id):
        """The status of ending a comm: LLM_NOT_YET_LINK for one not linked. Its preparation ends
        within JOIN_SECONDS; its links that no other comm names end on this side."""
        with self._lock:
            comm = self._comms.pop(comm_id, None)
            if comm is None:
                return LLMStatusCode.LLM_NOT_YET_LINK
            released = [cluster for cluster in comm.peers if self._release(cluster)]
            # An attempt is cut short only when no other comm waits for its link.
            self._end(comm, cut_short=comm.dialing is not None and comm.dialing[0] in released)
        comm.thread.join(JOIN_SECONDS)
        if comm.listens:
            self._agent.listeners.release(comm.endpoint)
        if not released:
            return SUCCESS
        status, _ = self._agent.unlink([LinkTarget(cluster, [], []) for cluster in released], UNLINK_TIMEOUT_MS,
                                       force=True)
        return SUCCESS if status == SUCCESS else LLMStatusCode.LLM_UNLINK_FAILED

    def _release(self, cluster):
        """One comm less names `cluster`: whether none does now."""
        self._holders[cluster] -= 1
        if self._holders[cluster]:
            return False
        del self._holders[cluster]
        return True

    @staticmethod
    def _end(comm, cut_short):
        comm.ending.set()
        if cut_short:
            with contextlib.suppress(OSError):
                comm.dialing[1].shutdown(socket.SHUT_RDWR)

    def close(self):
        """Ends every comm's preparation (at Finalize; the agent then ends the links and listeners)."""
        with self._lock:
            self._closed = True
            comms, self._comms, self._holders = list(self._comms.values()), {}, {}
            for comm in comms:
                self._end(comm, cut_short=comm.dialing is not None)
        deadline = time.monotonic() + JOIN_SECONDS
        for comm in comms:
            comm.thread.join(max(0.0, deadline - time.monotonic()))

    # The preparation, on the comm's thread

    def _prepare(self, comm, deadline):
        pending = dict(comm.peers)
        while not comm.ending.is_set():
            linked = set(self._agent.linked_clusters())   # one link serves both sides, whoever made it
            for cluster, (endpoint, dials) in list(pending.items()):
                if cluster in linked:
                    del pending[cluster]
                elif dials:
                    status = self._dial(comm, cluster, endpoint, deadline)
                    if status in (SUCCESS, LLMStatusCode.LLM_ALREADY_LINK):
                        del pending[cluster]
                    elif status == LLMStatusCode.LLM_PARAM_INVALID:   # this host lacks the address: no use waiting
                        comm.ending.set()
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0 or comm.ending.wait(min(RETRY_SECONDS, remaining)):
                break
        with self._lock:
            comm.status = FAILED if pending else OK
        if pending and not comm.ending.is_set():   # not unlinked, nor given up (_dial said why)
            log.warning("comm %r: clusters %s not linked in %s s", comm.name, sorted(pending), self._link_total_s)

    def _dial(self, comm, cluster, endpoint, deadline):
        """The status of one attempt to link `cluster` at `endpoint` from this side's device_ip:
        LLM_PARAM_INVALID when this host lacks that address."""
        try:
            connection = track(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        except OSError as error:   # out of descriptors, say: tried again, as a peer out of reach
            log.info("comm %r: no socket to link with: %s", comm.name, error)
            return LLMStatusCode.LLM_LINK_FAILED
        with self._lock:
            if comm.ending.is_set():
                connection.close()
                return LLMStatusCode.LLM_FAILED
            comm.dialing = (cluster, connection)
        try:
            try:
                connection.bind((comm.endpoint[0], 0))
            except OSError as error:
                log.warning("comm %r: cannot link from %s: %s", comm.name, comm.endpoint[0], error)
                connection.close()
                return LLMStatusCode.LLM_PARAM_INVALID
            try:
                connection.settimeout(max(0.001, min(CONNECT_SECONDS, deadline - time.monotonic())))
                connection.connect(endpoint)
            except OSError:   # not listening yet, or out of reach: tried again
                connection.close()
                return LLMStatusCode.LLM_LINK_FAILED
            return self._agent.link_over(connection, cluster, deadline)
        finally:
            with self._lock:
                comm.dialing = None
