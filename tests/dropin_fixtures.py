"""Fixtures of the drop-in's tests (tests/test_dropin_*.py): LLMDataDists in each mode."""
import pytest

from llmdd.llm_datadist import LLMConfig, LLMDataDist, LLMRole

POOL = '{"memory_size": 16777216}'


def initialized(**settings):
    """An LLMDataDist initialized with an LLMConfig of these settings (device 0)."""
    config = LLMConfig()
    config.device_id = 0
    for name, value in settings.items():
        setattr(config, name, value)
    datadist = LLMDataDist(LLMRole.PROMPT, 0)
    datadist.init(config.generate_options())
    return datadist


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
