"""Stubs for llmdd._desc: LLM-DataDist's enums, the C++ module constants and CacheDesc.

The enum values repeat llm_facts.h; tests/core/test_facts.py checks that they agree."""
import enum
from typing import Final, Sequence, SupportsIndex

__all__: list[str]

class LLMStatusCode(enum.IntEnum):
    LLM_SUCCESS = 0
    LLM_FAILED = 4294967295
    LLM_WAIT_PROC_TIMEOUT = 1343270913
    LLM_KV_CACHE_NOT_EXIST = 1343270914
    LLM_REPEAT_REQUEST = 1343270915
    LLM_REQUEST_ALREADY_COMPLETED = 1343270916
    LLM_PARAM_INVALID = 1343270917
    LLM_ENGINE_FINALIZED = 1343270918
    LLM_NOT_YET_LINK = 1343270919
    LLM_ALREADY_LINK = 1343270920
    LLM_LINK_FAILED = 1343270921
    LLM_UNLINK_FAILED = 1343270922
    LLM_NOTIFY_PROMPT_UNLINK_FAILED = 1343270923
    LLM_CLUSTER_NUM_EXCEED_LIMIT = 1343270924
    LLM_PROCESSING_LINK = 1343270925
    LLM_DEVICE_OUT_OF_MEMORY = 1343270926
    LLM_PREFIX_ALREADY_EXIST = 1343270927
    LLM_PREFIX_NOT_EXIST = 1343270928
    LLM_SEQ_LEN_OVER_LIMIT = 1343270929
    LLM_NO_FREE_BLOCK = 1343270930
    LLM_BLOCKS_OUT_OF_MEMORY = 1343270931
    LLM_CACHE_INCOMPATIBLE = 1343270932
    LLM_CACHE_KEY_ALREADY_EXIST = 1343270933
    LLM_COPY_CACHE_FAILED = 1343270934
    LLM_CACHE_ID_ALREADY_EXIST = 1343270935
    LLM_EXIST_LINK = 1343270936
    LLM_FEATURE_NOT_ENABLED = 1343270937
    LLM_TIMEOUT = 1343270938
    LLM_LINK_BUSY = 1343270939
    LLM_OUT_OF_MEMORY = 1343270940
    LLM_DEVICE_MEM_ERROR = 507053
    LLM_SUSPECT_REMOTE_ERROR = 507057
    LLM_UNKNOWN_ERROR = -1

class DataType(enum.IntEnum):
    DT_FLOAT = 0
    DT_FLOAT16 = 1
    DT_INT8 = 2
    DT_INT32 = 3
    DT_UINT8 = 4
    DT_INT16 = 6
    DT_UINT16 = 7
    DT_UINT32 = 8
    DT_INT64 = 9
    DT_UINT64 = 10
    DT_DOUBLE = 11
    DT_BOOL = 12
    DT_STRING = 13
    DT_DUAL_SUB_INT8 = 14
    DT_DUAL_SUB_UINT8 = 15
    DT_COMPLEX64 = 16
    DT_COMPLEX128 = 17
    DT_QINT8 = 18
    DT_QINT16 = 19
    DT_QINT32 = 20
    DT_QUINT8 = 21
    DT_QUINT16 = 22
    DT_RESOURCE = 23
    DT_STRING_REF = 24
    DT_DUAL = 25
    DT_VARIANT = 26
    DT_BF16 = 27
    DT_UNDEFINED = 28
    DT_INT4 = 29
    DT_UINT1 = 30
    DT_INT2 = 31
    DT_UINT2 = 32
    DT_COMPLEX32 = 33
    DT_HIFLOAT8 = 34
    DT_FLOAT8_E5M2 = 35
    DT_FLOAT8_E4M3FN = 36
    DT_FLOAT8_E8M0 = 37
    DT_FLOAT6_E3M2 = 38
    DT_FLOAT6_E2M3 = 39
    DT_FLOAT4_E2M1 = 40
    DT_FLOAT4_E1M2 = 41
    DT_HIFLOAT4 = 42

class CachePlacement(enum.IntEnum):
    kHost = 0
    kDevice = 1
    HOST = 0
    DEVICE = 1

class LlmRole(enum.IntEnum):
    kPrompt = 1
    kDecoder = 2
    kMix = 3
    PROMPT = 1
    DECODER = 2
    MIX = 3

Placement = CachePlacement
LLMRole = LlmRole

DT_FLOAT: Final[DataType]
DT_FLOAT16: Final[DataType]
DT_INT8: Final[DataType]
DT_INT32: Final[DataType]
DT_UINT8: Final[DataType]
DT_INT16: Final[DataType]
DT_UINT16: Final[DataType]
DT_UINT32: Final[DataType]
DT_INT64: Final[DataType]
DT_UINT64: Final[DataType]
DT_DOUBLE: Final[DataType]
DT_BOOL: Final[DataType]
DT_STRING: Final[DataType]
DT_DUAL_SUB_INT8: Final[DataType]
DT_DUAL_SUB_UINT8: Final[DataType]
DT_COMPLEX64: Final[DataType]
DT_COMPLEX128: Final[DataType]
DT_QINT8: Final[DataType]
DT_QINT16: Final[DataType]
DT_QINT32: Final[DataType]
DT_QUINT8: Final[DataType]
DT_QUINT16: Final[DataType]
DT_RESOURCE: Final[DataType]
DT_STRING_REF: Final[DataType]
DT_DUAL: Final[DataType]
DT_VARIANT: Final[DataType]
DT_BF16: Final[DataType]
DT_UNDEFINED: Final[DataType]
DT_INT4: Final[DataType]
DT_UINT1: Final[DataType]
DT_INT2: Final[DataType]
DT_UINT2: Final[DataType]
DT_COMPLEX32: Final[DataType]
DT_HIFLOAT8: Final[DataType]
DT_FLOAT8_E5M2: Final[DataType]
DT_FLOAT8_E4M3FN: Final[DataType]
DT_FLOAT8_E8M0: Final[DataType]
DT_FLOAT6_E3M2: Final[DataType]
DT_FLOAT6_E2M3: Final[DataType]
DT_FLOAT4_E2M1: Final[DataType]
DT_FLOAT4_E1M2: Final[DataType]
DT_HIFLOAT4: Final[DataType]

LLM_SUCCESS: Final[LLMStatusCode]
LLM_FAILED: Final[LLMStatusCode]
LLM_WAIT_PROC_TIMEOUT: Final[LLMStatusCode]
LLM_KV_CACHE_NOT_EXIST: Final[LLMStatusCode]
LLM_REPEAT_REQUEST: Final[LLMStatusCode]
LLM_REQUEST_ALREADY_COMPLETED: Final[LLMStatusCode]
LLM_PARAM_INVALID: Final[LLMStatusCode]
LLM_ENGINE_FINALIZED: Final[LLMStatusCode]
LLM_NOT_YET_LINK: Final[LLMStatusCode]
LLM_ALREADY_LINK: Final[LLMStatusCode]
LLM_LINK_FAILED: Final[LLMStatusCode]
LLM_UNLINK_FAILED: Final[LLMStatusCode]
LLM_NOTIFY_PROMPT_UNLINK_FAILED: Final[LLMStatusCode]
LLM_CLUSTER_NUM_EXCEED_LIMIT: Final[LLMStatusCode]
LLM_PROCESSING_LINK: Final[LLMStatusCode]
LLM_DEVICE_OUT_OF_MEMORY: Final[LLMStatusCode]
LLM_PREFIX_ALREADY_EXIST: Final[LLMStatusCode]
LLM_PREFIX_NOT_EXIST: Final[LLMStatusCode]
LLM_SEQ_LEN_OVER_LIMIT: Final[LLMStatusCode]
LLM_NO_FREE_BLOCK: Final[LLMStatusCode]
LLM_BLOCKS_OUT_OF_MEMORY: Final[LLMStatusCode]
LLM_CACHE_INCOMPATIBLE: Final[LLMStatusCode]
LLM_CACHE_KEY_ALREADY_EXIST: Final[LLMStatusCode]
LLM_COPY_CACHE_FAILED: Final[LLMStatusCode]
LLM_CACHE_ID_ALREADY_EXIST: Final[LLMStatusCode]
LLM_EXIST_LINK: Final[LLMStatusCode]
LLM_FEATURE_NOT_ENABLED: Final[LLMStatusCode]
LLM_TIMEOUT: Final[LLMStatusCode]
LLM_LINK_BUSY: Final[LLMStatusCode]
LLM_OUT_OF_MEMORY: Final[LLMStatusCode]
LLM_DEVICE_MEM_ERROR: Final[LLMStatusCode]
LLM_SUSPECT_REMOTE_ERROR: Final[LLMStatusCode]
LLM_UNKNOWN_ERROR: Final[LLMStatusCode]

def enum_values(name: str) -> dict[str, int]: ...

class CacheDesc:
    """num_tensors tensors of one shape and data type; shape is the shape of ONE tensor."""

    num_tensors: int
    data_type: DataType | int
    placement: CachePlacement | int
    def __init__(
        self,
        num_tensors: SupportsIndex = 0,
        shape: Sequence[SupportsIndex] = (),
        data_type: DataType | SupportsIndex = ...,
        placement: CachePlacement | SupportsIndex = ...,
    ) -> None: ...
    @property
    def shape(self) -> list[int]: ...
    @shape.setter
    def shape(self, value: list[SupportsIndex] | tuple[SupportsIndex, ...]) -> None: ...
    @property
    def size(self) -> int: ...
    def __copy__(self) -> CacheDesc: ...
    def __deepcopy__(self, memo: object) -> CacheDesc: ...
    def __eq__(self, other: object, /) -> bool: ...
    __hash__: None  # type: ignore[assignment]

