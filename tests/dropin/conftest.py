"""Fixtures of the drop-in's tests: LLMDataDists in each mode."""
import pytest
from support.dropin import POOL, initialized


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
