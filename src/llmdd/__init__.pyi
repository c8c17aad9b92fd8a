from ._datadist import BACKEND as BACKEND
from ._datadist import SIMULATED as SIMULATED
from ._datadist import Cache as Cache
from ._datadist import LLMException as LLMException
from ._datadist import LlmDataDist as LlmDataDist
from ._datadist import runtime_version as runtime_version
from ._desc import *
from ._tensor_view import TensorView as TensorView

__version__: str
