"""Cache helpers the core, pool, copy, view and hardening tests share: the seed descriptor, the
data types' sizes, random descriptors, and checks on what allocations return."""
from hypothesis import strategies as st

import llmdd


def seed_desc():
    """The AllocateCache page's example: 80 tensors of DT_FLOAT16 [1, 256]."""
    return llmdd.CacheDesc(80, [1, 256], llmdd.DT_FLOAT16)


# Data types with a defined size, and their element bits (docs/facts.md section 3).
SIZED_TYPES = {
    llmdd.DT_FLOAT: 32, llmdd.DT_FLOAT16: 16, llmdd.DT_INT8: 8, llmdd.DT_INT32: 32, llmdd.DT_UINT8: 8,
    llmdd.DT_INT16: 16, llmdd.DT_UINT16: 16, llmdd.DT_UINT32: 32, llmdd.DT_INT64: 64, llmdd.DT_UINT64: 64,
    llmdd.DT_DOUBLE: 64, llmdd.DT_BOOL: 8, llmdd.DT_STRING: 128, llmdd.DT_COMPLEX64: 64,
    llmdd.DT_COMPLEX128: 128, llmdd.DT_BF16: 16, llmdd.DT_INT4: 4, llmdd.DT_UINT1: 1, llmdd.DT_INT2: 2,
    llmdd.DT_UINT2: 2, llmdd.DT_COMPLEX32: 32, llmdd.DT_HIFLOAT8: 8, llmdd.DT_FLOAT8_E5M2: 8,
    llmdd.DT_FLOAT8_E4M3FN: 8, llmdd.DT_FLOAT8_E8M0: 8, llmdd.DT_FLOAT6_E3M2: 6, llmdd.DT_FLOAT6_E2M3: 6,
    llmdd.DT_FLOAT4_E2M1: 4, llmdd.DT_FLOAT4_E1M2: 4, llmdd.DT_HIFLOAT4: 4,
}

INT64_MAX = 2**63 - 1

# Random descriptors, valid and not: the model in test_model.py says which status each gets.
descriptors = st.builds(
    llmdd.CacheDesc,
    num_tensors=st.one_of(st.integers(0, 4), st.integers(0, 2**32 - 1)),
    shape=st.one_of(
        st.lists(st.integers(1, 64), min_size=1, max_size=4),
        st.lists(st.integers(-2, 2**40), max_size=35),
        st.lists(st.integers(-INT64_MAX - 1, INT64_MAX), max_size=4),
    ),
    data_type=st.one_of(st.sampled_from(list(llmdd.DataType)), st.integers(-5, 60)),
    placement=st.one_of(st.just(llmdd.CachePlacement.kDevice), st.integers(0, 3)),
)


def allocate_until_failure(engine, desc):
    """Allocate `desc` until AllocateCache fails: (the caches made, the failing status, the
    Cache the failed call was given)."""
    caches = []
    while True:
        cache = llmdd.Cache()
        status = engine.AllocateCache(desc, cache)
        if status != llmdd.LLM_SUCCESS:
            return caches, status, cache
        caches.append(cache)


def assert_disjoint(spans):
    """No two (start, end) byte ranges overlap."""
    spans = sorted(spans)
    overlapping = [(a, b) for a, b in zip(spans, spans[1:]) if a[1] > b[0]]
    assert not overlapping, f"overlapping ranges: {overlapping[:3]}"
