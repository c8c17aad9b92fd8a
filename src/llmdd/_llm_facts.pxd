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
