"""Fixtures of the drop-in's tests: LLMDataDists in each mode, this process's side of a test
between processes (local) and its drop-in peer processes (peers)."""
import pytest
from support.dropin import POOL, initialized, options
from support.peer import Peer

from llmdd.llm_datadist import LLMDataDist


@pytest.fixture
def datadist_v2():
    """Cache-manager mode (llm.EnableCacheManager) with a device and a host pool."""
    datadist = initialized(enable_cache_manager=True, mem_pool_cfg=POOL, host_mem_pool_cfg=POOL)
    yield datadist
    datadist.finalize()


@pytest.fixture
def datadist_v1():
    """v1 mode: kv_cache_manager, no pool."""
    datadist = initialized()
    yield datadist
    datadist.finalize()


@pytest.fixture
def ended_peers():
    """The peers a test started, checked once they have ended. Set up before `local`, so torn down
    after it: the peers finalize while this process does (each takes Mooncake ~2 s once linked)."""
    started = []
    yield started
    for peer in started:
        peer.close(check=True)


@pytest.fixture
def local(ended_peers):
    """This process's side: local(role, cluster_id, **LLMConfig settings) -> an initialized LLMDataDist."""
    made = []

    def initialize(role, cluster_id, **settings):
        datadist = LLMDataDist(role, cluster_id)
        datadist.init(options(**settings))
        made.append(datadist)
        return datadist

    yield initialize
    for datadist in made:
        datadist.finalize()


@pytest.fixture
def peers(ended_peers):
    """The other side(s): peers() -> a started drop-in Peer; each is ended (and checked) afterwards."""
    def start():
        ended_peers.append(Peer.dropin())
        return ended_peers[-1]

    yield start
    for peer in ended_peers:
        peer.end()
