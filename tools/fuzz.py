"""Coverage-guided fuzzing (atheris) of Initialize's options parser and of descriptor
validation with AllocateCache. Usage: python tools/fuzz.py options|descriptors -max_total_time=N

Coverage comes from the Python code (the parser, the harness's branches on outcomes); the
compiled validation is exercised but not instrumented.

A finding is any exception other than the documented ones, or a crash: atheris stops and
reports the input, and the process exits non-zero."""
import sys

import atheris

with atheris.instrument_imports():
    import llmdd
    from llmdd import _options

DOCUMENTED = (TypeError, ValueError, OverflowError, llmdd.LLMException)
KEYS = ["llm.DeviceId", "ge.exec.deviceId", "llm.SyncKvCacheWaitTime", "llm.ListenIpInfo", "llm.EnableSwitchRole",
        "llm.MemPoolConfig", "llm.HostMemPoolConfig", "llm.BufPoolCfg", "llmdd.TensorAlignment",
        "llmdd.MallocPolicy"]
STATUSES = set(llmdd.LLMStatusCode)


@atheris.instrument_func
def fuzz_options(data):
    source = atheris.FuzzedDataProvider(data)
    options = {}
    for _ in range(source.ConsumeIntInRange(0, 4)):
        key = KEYS[source.ConsumeIntInRange(0, len(KEYS) - 1)] if source.ConsumeBool() else source.ConsumeUnicode(12)
        options[key] = source.ConsumeUnicode(source.ConsumeIntInRange(0, 64))
    try:
        _options.parse_options(options)
    except _options.OptionError:
        pass


ENGINE = None


@atheris.instrument_func
def fuzz_descriptors(data):
    global ENGINE
    if ENGINE is None:
        ENGINE = llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt)
        assert ENGINE.Initialize({}) == llmdd.LLM_SUCCESS
    source = atheris.FuzzedDataProvider(data)
    number = lambda: source.ConsumeIntInRange(-(2**65), 2**65) if source.ConsumeBool() else source.ConsumeIntInRange(-2, 64)
    try:
        desc = llmdd.CacheDesc(number(), [number() for _ in range(source.ConsumeIntInRange(0, 40))], number(), number())
    except DOCUMENTED:
        return
    cache = llmdd.Cache()
    status = ENGINE.AllocateCache(desc, cache)
    assert status in STATUSES, status
    if status == llmdd.LLM_SUCCESS:
        assert ENGINE.DeallocateCache(cache.cache_id) == llmdd.LLM_SUCCESS
    else:
        assert cache.cache_id == -1


TARGETS = {"options": fuzz_options, "descriptors": fuzz_descriptors}

if __name__ == "__main__":
    target = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
