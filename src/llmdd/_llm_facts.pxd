# LLM-DataDist's numeric facts (llm_facts.h). Declarations only.
from libc.stdint cimport int64_t, uint32_t


cdef extern from "llm_facts.h" nogil:
    enum:
        LLM_SUCCESS
        LLM_FAILED
        LLM_PARAM_INVALID
        LLM_KV_CACHE_NOT_EXIST
        LLM_DEVICE_OUT_OF_MEMORY
        LLM_FEATURE_NOT_ENABLED

    enum:
        LLMDD_kHost
        LLMDD_kDevice

    enum:
        DT_FLOAT
        DT_FLOAT16
        DT_INT8
        DT_INT32
        DT_UINT8
        DT_INT16
        DT_UINT16
        DT_UINT32
        DT_INT64
        DT_UINT64
        DT_DOUBLE
        DT_BOOL
        DT_COMPLEX64
        DT_COMPLEX128
        DT_BF16
        DT_UNDEFINED

    ctypedef struct llmdd_named_value:
        const char* name
        int64_t value

    const llmdd_named_value llmdd_status_rows[]
    const llmdd_named_value llmdd_data_type_rows[]
    const llmdd_named_value llmdd_placement_rows[]
    const llmdd_named_value llmdd_role_rows[]
    const int llmdd_status_row_count
    const int llmdd_data_type_row_count
    const int llmdd_placement_row_count
    const int llmdd_role_row_count

    uint32_t llmdd_data_type_bits(int64_t data_type)
