"""Integer limits, written once: the ranges of the C types LLM-DataDist's arguments have, and the
limits of its rules that several layers check (docs/facts.md sections 1 and 6)."""

# (low, high) of each C integer type an argument of LLM-DataDist's APIs has.
UINT8 = (0, (1 << 8) - 1)
UINT16 = (0, (1 << 16) - 1)
INT32 = (-(1 << 31), (1 << 31) - 1)
UINT32 = (0, (1 << 32) - 1)
INT64 = (-(1 << 63), (1 << 63) - 1)
UINT64 = (0, (1 << 64) - 1)

# CANN's "no id": a CacheKey's unset req_id or prefix_id; a req_id of it only holds a batch entry's place.
INVALID_ID = UINT64[1]

# At most this many clusters a link or unlink call (LLM_CLUSTER_NUM_EXCEED_LIMIT above it).
MAX_CLUSTERS_PER_CALL = 16

# CANN's default layer width: a K and a V tensor per layer (layer ranges name tensors by it).
TENSOR_NUM_PER_LAYER = 2
