"""llmdd: LLM-DataDist's KV-cache allocation for Python.

CacheDesc and Cache describe and hold a cache; LlmDataDist allocates it with the status
codes and rules of CANN's LLM-DataDist. Importing llmdd loads neither numpy nor torch and
touches no runtime: the runtime is set up by LlmDataDist.Initialize.
"""
from ._datadist import BACKEND, SIMULATED, Cache, LLMException, LlmDataDist, runtime_version
from ._desc import *  # noqa: F403 - the enums, CacheDesc and the C++ module constants
from ._desc import __all__ as _desc_names
from ._tensor_view import TensorView
from ._version import version as __version__

__all__ = ["BACKEND", "SIMULATED", "Cache", "LLMException", "LlmDataDist", "TensorView", "runtime_version",
           *_desc_names]
