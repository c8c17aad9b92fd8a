"""llmdd: LLM-DataDist's KV-cache allocation for Python.

CacheDesc and Cache describe and hold a cache; LlmDataDist allocates it with the status
codes and rules of CANN's LLM-DataDist. Importing llmdd loads neither numpy nor torch and
touches no runtime: the runtime is set up by LlmDataDist.Initialize.
"""
from . import _desc
from ._datadist import BACKEND, SIMULATED, Cache, LLMException, LlmDataDist, runtime_version
from ._desc import CacheDesc
from ._tensor_view import TensorView

# The C++ API's transfer structs, from their own module on first use.
_TRANSFER_TYPES = ("CacheIndex", "ClusterInfo", "IpInfo", "KvCacheExtParam")

__all__ = ["BACKEND", "SIMULATED", "Cache", "LLMException", "LlmDataDist", "TensorView", "runtime_version",
           *_desc.__all__, *_TRANSFER_TYPES]


def __getattr__(name):
    # The enums and the C++ module constants come from _desc on first use, which is when _desc
    # builds them, and __version__ is read when asked for: `import llmdd` does neither
    # (bench/RESULTS.md, "Import"). Each is bound here once found, so later lookups are plain.
    if name == "__version__":
        from ._version import version as value
    elif name in _desc.__all__:
        value = getattr(_desc, name)
    elif name in _TRANSFER_TYPES:
        from . import _transfer_types
        value = getattr(_transfer_types, name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *__all__, "__version__"})
