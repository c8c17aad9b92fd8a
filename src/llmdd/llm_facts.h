/* LLM-DataDist's numeric facts, written once (docs/facts.md sections 1-3).
 *
 * Every layer derives from these lists: C and Cython use the enum constants, and the
 * Python IntEnums are built, on first use, from the tables at the bottom. */
#ifndef LLMDD_LLM_FACTS_H
#define LLMDD_LLM_FACTS_H

#include <stdint.h>

/* Status codes (docs/facts.md section 2). Status is uint32; every code but SUCCESS and FAILED
 * is 0x5010B000 | n. */
#define LLMDD_STATUS_BASE 0x5010B000u
#define LLMDD_FOR_EACH_STATUS(X)                                   \
    X(LLM_SUCCESS, 0u)                                             \
    X(LLM_FAILED, 0xFFFFFFFFu)                                     \
    X(LLM_WAIT_PROC_TIMEOUT, LLMDD_STATUS_BASE | 1u)               \
    X(LLM_KV_CACHE_NOT_EXIST, LLMDD_STATUS_BASE | 2u)              \
    X(LLM_REPEAT_REQUEST, LLMDD_STATUS_BASE | 3u)                  \
    X(LLM_REQUEST_ALREADY_COMPLETED, LLMDD_STATUS_BASE | 4u)       \
    X(LLM_PARAM_INVALID, LLMDD_STATUS_BASE | 5u)                   \
    X(LLM_ENGINE_FINALIZED, LLMDD_STATUS_BASE | 6u)                \
    X(LLM_NOT_YET_LINK, LLMDD_STATUS_BASE | 7u)                    \
    X(LLM_ALREADY_LINK, LLMDD_STATUS_BASE | 8u)                    \
    X(LLM_LINK_FAILED, LLMDD_STATUS_BASE | 9u)                     \
    X(LLM_UNLINK_FAILED, LLMDD_STATUS_BASE | 10u)                  \
    X(LLM_NOTIFY_PROMPT_UNLINK_FAILED, LLMDD_STATUS_BASE | 11u)    \
    X(LLM_CLUSTER_NUM_EXCEED_LIMIT, LLMDD_STATUS_BASE | 12u)       \
    X(LLM_PROCESSING_LINK, LLMDD_STATUS_BASE | 13u)                \
    X(LLM_DEVICE_OUT_OF_MEMORY, LLMDD_STATUS_BASE | 14u)           \
    X(LLM_PREFIX_ALREADY_EXIST, LLMDD_STATUS_BASE | 15u)           \
    X(LLM_PREFIX_NOT_EXIST, LLMDD_STATUS_BASE | 16u)               \
    X(LLM_SEQ_LEN_OVER_LIMIT, LLMDD_STATUS_BASE | 17u)             \
    X(LLM_NO_FREE_BLOCK, LLMDD_STATUS_BASE | 18u)                  \
    X(LLM_BLOCKS_OUT_OF_MEMORY, LLMDD_STATUS_BASE | 19u)           \
    X(LLM_CACHE_INCOMPATIBLE, LLMDD_STATUS_BASE | 20u)             \
    X(LLM_CACHE_KEY_ALREADY_EXIST, LLMDD_STATUS_BASE | 21u)        \
    X(LLM_COPY_CACHE_FAILED, LLMDD_STATUS_BASE | 22u)              \
    X(LLM_CACHE_ID_ALREADY_EXIST, LLMDD_STATUS_BASE | 23u)         \
    X(LLM_EXIST_LINK, LLMDD_STATUS_BASE | 24u)                     \
    X(LLM_FEATURE_NOT_ENABLED, LLMDD_STATUS_BASE | 25u)            \
    X(LLM_TIMEOUT, LLMDD_STATUS_BASE | 26u)                        \
    X(LLM_LINK_BUSY, LLMDD_STATUS_BASE | 27u)                      \
    X(LLM_OUT_OF_MEMORY, LLMDD_STATUS_BASE | 28u)

/* Codes only CANN's Python package has (its LLMStatusCode); not C++ Status values. */
#define LLMDD_FOR_EACH_PYTHON_ONLY_STATUS(X)                       \
    X(LLM_DEVICE_MEM_ERROR, 507053)                                \
    X(LLM_SUSPECT_REMOTE_ERROR, 507057)                            \
    X(LLM_UNKNOWN_ERROR, -1)

/* ge::DataType values and element sizes in bits (docs/facts.md section 3). 0 bits: the type has
 * no defined size, and AllocateCache answers LLM_PARAM_INVALID for it. */
#define LLMDD_FOR_EACH_DATA_TYPE(X)     \
    X(DT_FLOAT, 0, 32)                  \
    X(DT_FLOAT16, 1, 16)                \
    X(DT_INT8, 2, 8)                    \
    X(DT_INT32, 3, 32)                  \
    X(DT_UINT8, 4, 8)                   \
    X(DT_INT16, 6, 16)                  \
    X(DT_UINT16, 7, 16)                 \
    X(DT_UINT32, 8, 32)                 \
    X(DT_INT64, 9, 64)                  \
    X(DT_UINT64, 10, 64)                \
    X(DT_DOUBLE, 11, 64)                \
    X(DT_BOOL, 12, 8)                   \
    X(DT_STRING, 13, 128)               \
    X(DT_DUAL_SUB_INT8, 14, 0)          \
    X(DT_DUAL_SUB_UINT8, 15, 0)         \
    X(DT_COMPLEX64, 16, 64)             \
    X(DT_COMPLEX128, 17, 128)           \
    X(DT_QINT8, 18, 0)                  \
    X(DT_QINT16, 19, 0)                 \
    X(DT_QINT32, 20, 0)                 \
    X(DT_QUINT8, 21, 0)                 \
    X(DT_QUINT16, 22, 0)                \
    X(DT_RESOURCE, 23, 0)               \
    X(DT_STRING_REF, 24, 0)             \
    X(DT_DUAL, 25, 0)                   \
    X(DT_VARIANT, 26, 0)                \
    X(DT_BF16, 27, 16)                  \
    X(DT_UNDEFINED, 28, 0)              \
    X(DT_INT4, 29, 4)                   \
    X(DT_UINT1, 30, 1)                  \
    X(DT_INT2, 31, 2)                   \
    X(DT_UINT2, 32, 2)                  \
    X(DT_COMPLEX32, 33, 32)             \
    X(DT_HIFLOAT8, 34, 8)               \
    X(DT_FLOAT8_E5M2, 35, 8)            \
    X(DT_FLOAT8_E4M3FN, 36, 8)          \
    X(DT_FLOAT8_E8M0, 37, 8)            \
    X(DT_FLOAT6_E3M2, 38, 6)            \
    X(DT_FLOAT6_E2M3, 39, 6)            \
    X(DT_FLOAT4_E2M1, 40, 4)            \
    X(DT_FLOAT4_E1M2, 41, 4)            \
    X(DT_HIFLOAT4, 42, 4)

/* CachePlacement and LlmRole: the C++ names first, then the Python package's aliases. */
#define LLMDD_FOR_EACH_PLACEMENT(X) X(kHost, 0) X(kDevice, 1) X(HOST, 0) X(DEVICE, 1)
#define LLMDD_FOR_EACH_ROLE(X)                                          \
    X(kPrompt, 1) X(kDecoder, 2) X(kMix, 3) X(PROMPT, 1) X(DECODER, 2) X(MIX, 3)

#define LLMDD_AS_STATUS_ENUM(name, value) name = (uint32_t)(value),
enum llmdd_status { LLMDD_FOR_EACH_STATUS(LLMDD_AS_STATUS_ENUM) };

#define LLMDD_AS_DATA_TYPE_ENUM(name, value, bits) name = value,
enum llmdd_data_type { LLMDD_FOR_EACH_DATA_TYPE(LLMDD_AS_DATA_TYPE_ENUM) LLMDD_DATA_TYPE_END };

#define LLMDD_AS_PREFIXED_ENUM(name, value) LLMDD_##name = value,
enum llmdd_placement { LLMDD_FOR_EACH_PLACEMENT(LLMDD_AS_PREFIXED_ENUM) };
enum llmdd_role { LLMDD_FOR_EACH_ROLE(LLMDD_AS_PREFIXED_ENUM) };

/* Tables the Python layer turns into IntEnums. */
typedef struct {
    const char *name;
    int64_t value;
} llmdd_named_value;

#define LLMDD_AS_ROW(name, value) {#name, (int64_t)(value)},
#define LLMDD_AS_DATA_TYPE_ROW(name, value, bits) {#name, value},
static const llmdd_named_value llmdd_status_rows[] = {
    LLMDD_FOR_EACH_STATUS(LLMDD_AS_ROW) LLMDD_FOR_EACH_PYTHON_ONLY_STATUS(LLMDD_AS_ROW)};
static const llmdd_named_value llmdd_data_type_rows[] = {LLMDD_FOR_EACH_DATA_TYPE(LLMDD_AS_DATA_TYPE_ROW)};
static const llmdd_named_value llmdd_placement_rows[] = {LLMDD_FOR_EACH_PLACEMENT(LLMDD_AS_ROW)};
static const llmdd_named_value llmdd_role_rows[] = {LLMDD_FOR_EACH_ROLE(LLMDD_AS_ROW)};

#define LLMDD_ROW_COUNT(rows) ((int)(sizeof(rows) / sizeof((rows)[0])))
static const int llmdd_status_row_count = LLMDD_ROW_COUNT(llmdd_status_rows);
static const int llmdd_data_type_row_count = LLMDD_ROW_COUNT(llmdd_data_type_rows);
static const int llmdd_placement_row_count = LLMDD_ROW_COUNT(llmdd_placement_rows);
static const int llmdd_role_row_count = LLMDD_ROW_COUNT(llmdd_role_rows);

/* Bits per element of a data type; 0 for a value with no defined size, or no value at all. */
static inline uint32_t llmdd_data_type_bits(int64_t data_type) {
    switch (data_type) {
#define LLMDD_AS_BITS_CASE(name, value, bits) case value: return bits;
        LLMDD_FOR_EACH_DATA_TYPE(LLMDD_AS_BITS_CASE)
    default:
        return 0;
    }
}

#endif
