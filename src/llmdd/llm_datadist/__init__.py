"""A drop-in for CANN's `llm_datadist` Python package, over llmdd's engine.

    import llmdd.llm_datadist as llm_datadist

gives the names Python users of LLM-DataDist already write (docs/facts.md sections 6 and 9), laid
out in CANN's modules (status, configs, data_type, v2.llm_types, v2.cache_manager, v2.llm_datadist),
with CANN's argument checks: LLMDataDist with init/finalize and its cache managers (v2
`cache_manager` with llm.EnableCacheManager, v1 `kv_cache_manager` without), LLMConfig, CacheDesc,
Cache/KvCache, the keys, the transfer types and the enums. Every allocation goes through
llmdd.LlmDataDist and its cache registry; links, pulls and pushes go through the engine's one
transfer service (llmdd.transfer, over Mooncake's Transfer Engine). docs/dropin.md says how it
differs from CANN.
"""
from .configs import LLMClusterInfo, LLMConfig, LlmConfig, LLMRole
from .data_type import NUMPY_TABLES as _NUMPY_TABLES
from .data_type import DataType
from .status import LLMException, LLMStatusCode, Status
from .v2.cache_manager import CacheManager, KvCacheManager
from .v2.llm_datadist import LLMDataDist
from .v2.llm_types import (
    BlocksCacheKey,
    Cache,
    CacheDesc,
    CacheKey,
    CacheKeyByIdAndIndex,
    CacheTask,
    KvCache,
    LayerSynchronizer,
    MemInfo,
    Memtype,
    Placement,
    RegisterMemStatus,
    TransferConfig,
    TransferWithCacheKeyConfig,
)

__all__ = [
    "LLMDataDist", "LLMConfig", "LlmConfig", "LLMClusterInfo", "CacheDesc", "Cache", "KvCache", "CacheManager",
    "KvCacheManager", "CacheKey", "CacheKeyByIdAndIndex", "BlocksCacheKey", "LLMException", "LLMStatusCode",
    "Status", "LLMRole", "Placement", "DataType", "RegisterMemStatus", "MemInfo", "Memtype", "TransferConfig",
    "TransferWithCacheKeyConfig", "LayerSynchronizer", "CacheTask",
]

# CANN's list of the names of its v2 package, which its tests bind with `for item in v2_list:
# globals()[item] = getattr(llm_datadist, item)`: every exported name but the managers (CANN's package
# exports no CacheManager, and KvCacheManager is its v1 package's).
v2_list = [name for name in __all__ if name not in ("CacheManager", "KvCacheManager")]


def __getattr__(name):
    """CANN's numpy dtype tables (data_type builds them, and imports numpy, on first use); and CANN's
    v1-only Tensor / TensorDesc, which llmdd does not provide (CANN raises ImportError without v1 too)."""
    if name in _NUMPY_TABLES:
        from . import data_type
        return getattr(data_type, name)
    if name in ("Tensor", "TensorDesc"):
        raise ImportError(f"llmdd.llm_datadist has no {name}: it is CANN's v1-only (llm_datadist_v1) type")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
