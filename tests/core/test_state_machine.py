"""A model-based test of the engine's lifecycle: hypothesis drives allocate, deallocate, copy,
export (a view), drop an export, finalize and initialize, each on one of two threads, with
injected free failures, and after every step memory_stats and the host runtime's device usage
must be what a plain model of the rules says. CI also runs it under AddressSanitizer."""
import gc
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

import llmdd
import llmdd.sim
from llmdd import Cache, CacheDesc, LlmDataDist, LlmRole

pytestmark = pytest.mark.sim_only

ALIGNMENT = 512
SLACK = ALIGNMENT - 64          # the engine asks the runtime for room to align the first tensor
SHAPES = [[4, 100], [2, 512], [8, 24]]
_other_thread = ThreadPoolExecutor(1)


def held_bytes(shape):
    tensor = shape[0] * shape[1]
    return 2 * (-(-tensor // ALIGNMENT) * ALIGNMENT) + SLACK


def charged_bytes(held):
    return -(-held // 32) * 32 + 32      # the runtime's rule: rounded up to 32, plus 32


def device_usage():
    try:
        return llmdd.sim.device_usage(0)
    except ValueError:
        return (0, 0)                    # the runtime is finalized: nothing held


class EngineLifecycle(RuleBasedStateMachine):
    caches = Bundle("caches")
    views = Bundle("views")

    def __init__(self):
        super().__init__()
        self.engine = LlmDataDist(0, LlmRole.kPrompt)
        self.initialized = False
        self.live = {}            # cache_id -> held bytes, caches the engine holds
        self.pending = {}         # cache_id -> held bytes, released but still exported
        self.view_counts = {}     # cache_id -> live views
        self.exports_made = []    # (cache_id, view), None once dropped
        self.baseline = device_usage()

    def on(self, thread, call, *args):
        """Run a call on this thread (0) or the other one (1)."""
        return call(*args) if thread == 0 else _other_thread.submit(call, *args).result()

    def release(self, cache_id):
        held = self.live.pop(cache_id)
        if self.view_counts.get(cache_id):
            self.pending[cache_id] = held

    @rule(thread=st.integers(0, 1))
    def initialize(self, thread):
        status = self.on(thread, self.engine.Initialize, {"llm.DeviceId": "0"})
        if self.initialized or not self.pending:
            assert status == llmdd.LLM_SUCCESS
            self.initialized = True
        else:
            assert status == llmdd.LLM_FAILED   # exports of the last initialization are alive

    @rule(thread=st.integers(0, 1))
    def finalize(self, thread):
        self.on(thread, self.engine.Finalize)
        for cache_id in list(self.live):
            self.release(cache_id)
        self.initialized = False

    @rule(target=caches, thread=st.integers(0, 1), shape=st.sampled_from(SHAPES))
    def allocate(self, thread, shape):
        cache = Cache()
        status = self.on(thread, self.engine.AllocateCache, CacheDesc(2, shape, llmdd.DT_INT8), cache)
        if not self.initialized:
            assert status == llmdd.LLM_FAILED
        else:
            assert status == llmdd.LLM_SUCCESS
            self.live[cache.cache_id] = held_bytes(shape)
        return cache

    @rule(thread=st.integers(0, 1), cache=caches, fail=st.booleans())
    def deallocate(self, thread, cache, fail):
        will_free_now = self.initialized and cache.cache_id in self.live and not self.view_counts.get(cache.cache_id)
        if fail and will_free_now:
            llmdd.sim.inject_failure("aclrtFree", 1, 500000)
        status = self.on(thread, self.engine.DeallocateCache, cache.cache_id)
        if not self.initialized:
            assert status == llmdd.LLM_FAILED
        elif cache.cache_id not in self.live:
            assert status == llmdd.LLM_KV_CACHE_NOT_EXIST
        elif fail and will_free_now:
            assert status == llmdd.LLM_FAILED     # the runtime kept the memory; a retry may free it
        else:
            assert status == llmdd.LLM_SUCCESS
            self.release(cache.cache_id)

    @rule(thread=st.integers(0, 1), src=caches, dst=caches)
    def copy(self, thread, src, dst):
        status = self.on(thread, self.engine.CopyKvBlocks, src, dst, [0], [[1]])
        if not self.initialized:
            assert status == llmdd.LLM_FAILED
        elif src.cache_id not in self.live or dst.cache_id not in self.live:
            assert status == llmdd.LLM_KV_CACHE_NOT_EXIST
        elif src.cache_desc != dst.cache_desc:
            assert status == llmdd.LLM_PARAM_INVALID
        else:
            assert status == llmdd.LLM_SUCCESS    # block 0 to block 1, within one cache too

    @rule(target=views, thread=st.integers(0, 1), cache=caches)
    def export(self, thread, cache):
        if not (self.initialized and cache.cache_id in self.live):
            with pytest.raises(ValueError):
                self.on(thread, cache.tensor, 0)
            return None
        # The bundle holds a ticket, not the view: hypothesis keeps every value a rule
        # returned, and a view it kept would never be dropped.
        ticket = len(self.exports_made)
        self.exports_made.append((cache.cache_id, self.on(thread, cache.tensor, 1)))
        self.view_counts[cache.cache_id] = self.view_counts.get(cache.cache_id, 0) + 1
        return ticket

    @rule(thread=st.integers(0, 1), ticket=consumes(views))
    def drop_export(self, thread, ticket):
        if ticket is None:
            return
        cache_id, view = self.exports_made[ticket]
        holder = [view]
        del view
        self.exports_made[ticket] = None
        self.on(thread, holder.clear)   # the last reference goes on that thread
        self.view_counts[cache_id] -= 1
        if self.view_counts[cache_id] == 0 and cache_id in self.pending:
            del self.pending[cache_id]

    @invariant()
    def stats_and_device_agree_with_the_model(self):
        stats = self.engine.memory_stats()
        if self.initialized:
            assert stats["num_caches"] == len(self.live)
            assert stats["bytes_in_use"] == sum(self.live.values())
        assert stats["num_pending"] == len(self.pending)
        assert stats["pending_bytes"] == sum(self.pending.values())
        held = [*self.live.values(), *self.pending.values()]
        expected = (self.baseline[0] + sum(charged_bytes(size) for size in held), self.baseline[1] + len(held))
        assert device_usage() == expected

    def teardown(self):
        # Drop the views, so that this example's memory is all freed before the next one
        # counts the device's usage.
        self.exports_made.clear()
        self.engine.Finalize()
        gc.collect()
        assert device_usage() == self.baseline


EngineLifecycle.TestCase.settings = settings(
    max_examples=int(os.environ.get("LLMDD_STATE_MACHINE_EXAMPLES", "60")), stateful_step_count=40, deadline=None)
test_engine_lifecycle = EngineLifecycle.TestCase
