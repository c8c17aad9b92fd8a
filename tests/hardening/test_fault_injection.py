"""Every runtime call the engine makes, failed at every position it comes in: after each
injected failure the status says so, memory_stats and the simulated device's memory are exactly
as before the call, and the engine still works."""
import json
import threading

import numpy
import pytest

import llmdd
import llmdd.sim
from llmdd import Cache, CacheDesc, CachePlacement, LlmDataDist, LlmRole

pytestmark = pytest.mark.sim_only

INTERNAL_ERROR = 500000
POOLS = {"llm.MemPoolConfig": json.dumps({"memory_size": 1 << 24}),
         "llm.HostMemPoolConfig": json.dumps({"memory_size": 1 << 22})}
DESC = CacheDesc(4, [8, 256], llmdd.DT_INT8)


def calls_made(action):
    """{runtime call: how many times `action` made it}."""
    before = {call: llmdd.sim.call_count(call) for call in llmdd.sim.CALLS}
    action()
    counts = {call: llmdd.sim.call_count(call) - before[call] for call in llmdd.sim.CALLS}
    return {call: count for call, count in counts.items() if count}


def injection_points(setup, action):
    """(call, position) for every runtime call `action` makes on a fresh `setup()`."""
    state = setup()
    try:
        counts = calls_made(lambda: action(state))
    finally:
        teardown(state)
    return [(call, position) for call, count in sorted(counts.items()) for position in range(1, count + 1)]


def teardown(state):
    for engine in state["engines"]:
        engine.Finalize()


def stats_without_failure_count(engine):
    stats = engine.memory_stats()
    stats.pop("num_failed_allocs")
    return stats


def assert_engine_works(engine):
    cache = Cache()
    assert engine.AllocateCache(DESC, cache) == llmdd.LLM_SUCCESS
    assert engine.DeallocateCache(cache.cache_id) == llmdd.LLM_SUCCESS


def engine_with_caches(options):
    def setup():
        engine = LlmDataDist(0, LlmRole.kPrompt)
        assert engine.Initialize(options) == llmdd.LLM_SUCCESS
        caches = [engine.allocate_cache(DESC) for _ in range(3)]
        host = numpy.zeros((4, DESC.size), numpy.uint8)
        host_cache = Cache.create_cpu_cache(CacheDesc(4, [8, 256], llmdd.DT_INT8, CachePlacement.kHost),
                                            [row.ctypes.data for row in host])
        return {"engines": [engine], "engine": engine, "caches": caches, "host": host, "host_cache": host_cache}
    return setup


def on_a_new_thread(call):
    """Run `call` on a thread that has no ACL context, so the engine must bind its own."""
    def run(state):
        results = []
        thread = threading.Thread(target=lambda: results.append(call(state)))
        thread.start()
        thread.join()
        return results[0]
    return run


OPERATIONS = {
    "allocate": lambda state: state["engine"].AllocateCache(DESC, Cache()),
    "deallocate": lambda state: state["engine"].DeallocateCache(state["caches"][1].cache_id),
    "copy_blocks": lambda state: state["engine"].CopyKvBlocks(state["caches"][0], state["host_cache"],
                                                              [0, 2, 3, 7], [[1, 2, 3, 4]]),
    "copy_cache": lambda state: state["engine"].CopyKvCache(state["caches"][0], state["caches"][2], 1, 5),
}
OPERATIONS["allocate_on_a_new_thread"] = on_a_new_thread(OPERATIONS["allocate"])
OPERATIONS["deallocate_on_a_new_thread"] = on_a_new_thread(OPERATIONS["deallocate"])


@pytest.mark.parametrize("options", [{}, POOLS], ids=["runtime", "pools"])
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_every_runtime_failure_during_an_operation(options, operation):
    setup, action = engine_with_caches(options), OPERATIONS[operation]
    points = injection_points(setup, action)
    assert points or options, "the runtime path makes runtime calls"
    for call, position in points:
        state = setup()
        engine = state["engine"]
        stats, usage = stats_without_failure_count(engine), llmdd.sim.device_usage(0)
        llmdd.sim.inject_failure(call, position, INTERNAL_ERROR)
        status = action(state)
        llmdd.sim.inject_failure(call, 0, 0)
        assert status == llmdd.LLM_FAILED, (operation, call, position)
        assert stats_without_failure_count(engine) == stats, (operation, call, position)
        assert llmdd.sim.device_usage(0) == usage, (operation, call, position)
        assert_engine_works(engine)
        assert action(state) == llmdd.LLM_SUCCESS
        teardown(state)


def test_every_runtime_failure_during_initialize():
    def setup():
        return {"engines": [LlmDataDist(0, LlmRole.kPrompt)]}

    def action(state):
        return state["engines"][0].Initialize(POOLS)

    for call, position in injection_points(setup, action):
        state = setup()
        engine = state["engines"][0]
        llmdd.sim.inject_failure(call, position, INTERNAL_ERROR)
        status = action(state)
        llmdd.sim.inject_failure(call, 0, 0)
        assert status == llmdd.LLM_FAILED and not engine.initialized, (call, position)
        assert engine.Initialize(POOLS) == llmdd.LLM_SUCCESS, (call, position)
        assert llmdd.sim.device_usage(0)[1] == 1, (call, position)     # just the new pool
        assert_engine_works(engine)
        teardown(state)
        witness = LlmDataDist(0, LlmRole.kPrompt)
        assert witness.Initialize({}) == llmdd.LLM_SUCCESS
        assert llmdd.sim.device_usage(0) == (0, 0), (call, position)
        witness.Finalize()


@pytest.mark.parametrize("options", [{}, POOLS], ids=["runtime", "pools"])
def test_every_runtime_failure_during_finalize(options):
    setup = engine_with_caches(options)
    for call, position in injection_points(setup, lambda state: teardown(state)):
        state = setup()
        llmdd.sim.inject_failure(call, position, INTERNAL_ERROR)
        teardown(state)
        llmdd.sim.inject_failure(call, 0, 0)
        engine = state["engine"]
        assert not engine.initialized and engine.memory_stats()["num_caches"] == 0, (call, position)
        assert engine.Initialize(options) == llmdd.LLM_SUCCESS, (call, position)
        assert_engine_works(engine)
        engine.Finalize()
        witness = LlmDataDist(0, LlmRole.kPrompt)
        assert witness.Initialize({}) == llmdd.LLM_SUCCESS
        assert llmdd.sim.device_usage(0) == (0, 0), (call, position)     # nothing left behind
        witness.Finalize()


@pytest.mark.parametrize("history", ["copied", "viewed and dropped"])
def test_a_failed_free_after_every_export_is_gone_reports_and_can_be_retried(history):
    # A copy's pin ends with the copy, and a dropped view leaves nothing behind: the cache
    # is freed at DeallocateCache again, so a runtime failure there is the caller's to see.
    with LlmDataDist(0, LlmRole.kPrompt) as dd:
        assert dd.Initialize({}) == llmdd.LLM_SUCCESS
        cache, other = dd.allocate_cache(DESC), dd.allocate_cache(DESC)
        if history == "copied":
            dd.copy_blocks(cache, other, [0], [[1]])
        else:
            view = cache.tensor(0)
            del view
        stats, usage = dd.memory_stats(), llmdd.sim.device_usage(0)
        llmdd.sim.inject_failure("aclrtFree", 1, INTERNAL_ERROR)
        assert dd.DeallocateCache(cache.cache_id) == llmdd.LLM_FAILED
        assert dd.memory_stats() == stats
        assert llmdd.sim.device_usage(0) == usage
        assert dd.DeallocateCache(cache.cache_id) == llmdd.LLM_SUCCESS
        one_cache = stats["bytes_in_use"] // 2      # of the two caches, alike
        assert dd.memory_stats()["bytes_in_use"] == stats["bytes_in_use"] - one_cache
        assert llmdd.sim.device_usage(0)[1] == usage[1] - 1
