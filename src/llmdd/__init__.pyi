from ._datadist import BACKEND as BACKEND
from ._datadist import SIMULATED as SIMULATED
from ._datadist import Cache as Cache
from ._datadist import LLMException as LLMException
from ._datadist import LlmDataDist as LlmDataDist
from ._datadist import runtime_version as runtime_version
from ._desc import *
from ._tensor_view import TensorView as TensorView
from ._transfer_types import CacheIndex as CacheIndex
from ._transfer_types import ClusterInfo as ClusterInfo
from ._transfer_types import IpInfo as IpInfo
from ._transfer_types import KvCacheExtParam as KvCacheExtParam

__version__: str
