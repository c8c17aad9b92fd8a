"""Threads racing the engine's lifecycle: Initialize, Finalize and the deferred teardown that
the last export of a finalized engine runs. Each race runs in a child process with a timeout,
so a crash or a hang fails one test rather than the run."""
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.sim_only  # they read the host runtime's device usage and call counts

POOL_OPTIONS = '{"llm.DeviceId": "0", "llm.MemPoolConfig": \'{"memory_size": 67108864}\'}'


def run_child(body, timeout=120):
    """Run `body` in a fresh interpreter; it prints "ok" when its checks pass."""
    script = "import gc, threading\nimport llmdd, llmdd.sim\n" + textwrap.dedent(body)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"child exited {result.returncode}:\n{result.stderr[-3000:]}"
    assert result.stdout.split()[-1:] == ["ok"], result.stdout[-2000:] + result.stderr[-2000:]


def test_initialize_waits_for_a_teardown_that_another_thread_runs():
    # Finalize with a view alive defers the teardown to whoever drops the last export; here a
    # second thread drops it while this one spins on Initialize. The new set-up must never
    # interleave with the old teardown (which frees the pool with the GIL released).
    run_child(f"""
        options = {POOL_OPTIONS}
        desc = llmdd.CacheDesc(2, [4, 4096], llmdd.DT_FLOAT16)
        dd = llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt)
        for round in range(40):
            assert dd.Initialize(options) == llmdd.LLM_SUCCESS
            views = [dd.allocate_cache(desc).tensor(0)]
            dd.Finalize()
            dropper = threading.Thread(target=views.clear)
            dropper.start()
            while dd.Initialize(options) != llmdd.LLM_SUCCESS:
                pass
            dropper.join()
            cache = dd.allocate_cache(desc)
            memoryview(cache.tensor(1)).cast("B")[:] = b"\\x5a" * (4 * 4096 * 2)
            assert llmdd.sim.device_usage(0)[1] == 1, llmdd.sim.device_usage(0)   # the new pool only
            dd.Finalize()
            gc.collect()
        try:
            llmdd.sim.device_usage(0)
        except ValueError:
            print("ok")    # aclFinalize ran: nothing of any round was left behind
    """)


def test_initialize_on_another_thread_waits_for_finalize():
    run_child(f"""
        options = {POOL_OPTIONS}
        desc = llmdd.CacheDesc(8, [16, 4096], llmdd.DT_FLOAT16)
        dd = llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt)
        for round in range(40):
            assert dd.Initialize(options) == llmdd.LLM_SUCCESS
            caches = [dd.allocate_cache(desc) for _ in range(4)]
            finalizer = threading.Thread(target=dd.Finalize)
            finalizer.start()
            while dd.Initialize(options) != llmdd.LLM_SUCCESS:
                pass
            finalizer.join()
            if not dd.initialized:          # Finalize came second: it undid this Initialize
                assert dd.Initialize(options) == llmdd.LLM_SUCCESS
            cache = dd.allocate_cache(desc)
            memoryview(cache.tensor(0)).cast("B")[:8] = b"12345678"
            assert llmdd.sim.device_usage(0)[1] == 1, llmdd.sim.device_usage(0)
            dd.Finalize()
        try:
            llmdd.sim.device_usage(0)
        except ValueError:
            print("ok")
    """)


def test_two_threads_initializing_one_engine_set_it_up_once():
    run_child(f"""
        options = {POOL_OPTIONS}
        for round in range(20):
            dd = llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt)
            start = threading.Barrier(2)
            statuses = []
            def initialize():
                start.wait()
                statuses.append(dd.Initialize(options))
            threads = [threading.Thread(target=initialize) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert statuses == [llmdd.LLM_SUCCESS] * 2, statuses
            assert llmdd.sim.device_usage(0)[1] == 1, llmdd.sim.device_usage(0)   # one pool
            dd.Finalize()
            try:
                llmdd.sim.device_usage(0)
            except ValueError:
                pass   # the runtime was finalized: no engine is counted twice
            else:
                raise AssertionError(f"round {{round}}: the runtime outlived the only engine")
        print("ok")
    """)


def test_device_memory_info_counts_as_a_call_in_flight():
    # Finalize waits for calls that run without the GIL: device_memory_info is one of them,
    # so a Finalize racing it never resets the device under it.
    run_child("""
        dd = llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt)
        for round in range(200):
            assert dd.Initialize({}) == llmdd.LLM_SUCCESS
            errors = []
            def query():
                try:
                    free, total = dd.device_memory_info()
                    assert 0 < free <= total
                except llmdd.LLMException as error:
                    assert error.status_code == llmdd.LLM_FAILED   # Finalize came first
                except AssertionError as error:
                    errors.append(error)
            reader = threading.Thread(target=query)
            reader.start()
            dd.Finalize()
            reader.join()
            assert not errors, errors
        print("ok")
    """)


@pytest.mark.slow   # a 3 s stress run: deselected by default, run by .ci/run
def test_restarts_while_exports_drop_on_other_threads():
    # Stress: one thread restarts the engine while others make views and drop them, so that
    # the deferred teardown runs on their threads while this one spins on Initialize.
    run_child(f"""
        import random
        options = {POOL_OPTIONS}
        desc = llmdd.CacheDesc(2, [8, 1024], llmdd.DT_FLOAT16)
        dd = llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt)
        stop = threading.Event()
        errors = []
        def worker(seed):
            rng = random.Random(seed)
            views = []
            try:
                while not stop.is_set():
                    cache = llmdd.Cache()
                    if dd.AllocateCache(desc, cache) != llmdd.LLM_SUCCESS:
                        views.clear()
                        continue
                    if rng.random() < 0.7:
                        try:
                            views.append(cache.tensor(rng.randrange(2)))
                        except ValueError:            # a Finalize came between: expected
                            views.clear()
                            continue
                        memoryview(views[-1]).cast("B")[:4] = b"abcd"
                    dd.DeallocateCache(cache.cache_id)
                    if len(views) > rng.randrange(1, 6):
                        views.pop(rng.randrange(len(views)))
            except Exception as error:
                errors.append(repr(error))
        workers = [threading.Thread(target=worker, args=(seed,)) for seed in range(3)]
        assert dd.Initialize(options) == llmdd.LLM_SUCCESS
        for thread in workers:
            thread.start()
        import time
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            time.sleep(0.001)            # the workers run meanwhile
            dd.Finalize()
            while dd.Initialize(options) != llmdd.LLM_SUCCESS:
                pass
            probe = dd.allocate_cache(desc)      # the new set-up is whole: its context and pool work
            memoryview(probe.tensor(0)).cast("B")[:4] = b"main"
        stop.set()
        for thread in workers:
            thread.join()
        dd.Finalize()
        gc.collect()
        assert not errors, errors
        try:
            llmdd.sim.device_usage(0)
        except ValueError:
            print("ok")
    """)


def test_an_initialize_interrupted_while_it_sets_up_leaves_the_engine_usable():
    # An exception (a signal's KeyboardInterrupt, say) while Initialize makes the engine's services
    # must leave no set-up marked under way: the next Initialize and Finalize do not wait forever.
    run_child("""
        import llmdd._engine_services as services
        made = services.EngineServices.__init__
        def interrupted(self, *arguments):
            raise KeyboardInterrupt
        dd = llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt)
        services.EngineServices.__init__ = interrupted
        try:
            dd.Initialize({"llm.DeviceId": "0"})
        except KeyboardInterrupt:
            pass
        services.EngineServices.__init__ = made
        assert dd.Initialize({"llm.DeviceId": "0"}) == llmdd.LLM_SUCCESS
        dd.Finalize()
        print("ok")
    """, timeout=30)


def test_a_finalize_run_by_a_collection_while_the_transfer_service_is_made_does_not_hang():
    # The service is made on the first transfer call; a garbage collection meanwhile may run any
    # object's __del__ on this thread, even one that finalizes the engine.
    run_child("""
        import llmdd.transfer._service as service_module
        dd = llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt)
        assert dd.Initialize({"llm.DeviceId": "0"}) == llmdd.LLM_SUCCESS
        made = service_module.TransferService.__init__
        def collected(self, *arguments):
            dd.Finalize()   # what a __del__ run by the collection would do
            made(self, *arguments)
        service_module.TransferService.__init__ = collected
        assert dd.LinkLlmClusters([], []) == llmdd.LLM_FAILED   # finalized meanwhile: no service kept
        assert not dd.initialized
        print("ok")
    """, timeout=30)


def test_set_role_racing_finalize_leaves_nothing_listening():
    # SetRole makes the transfer service anew on its new address while Finalize, on another thread,
    # stops the engine's services: whichever comes first, no listener outlives the Finalize.
    run_child("""
        import socket
        dd = llmdd.LlmDataDist(0, llmdd.LlmRole.kDecoder)
        for round in range(30):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            assert dd.Initialize({"llm.DeviceId": "0"}) == llmdd.LLM_SUCCESS
            statuses = []
            switcher = threading.Thread(target=lambda: statuses.append(
                dd.SetRole(llmdd.LlmRole.kPrompt, {"llm.ListenIpInfo": f"127.0.0.1:{port}"})))
            switcher.start()
            dd.Finalize()
            switcher.join()
            assert statuses[0] in (llmdd.LLM_SUCCESS, llmdd.LLM_FAILED), statuses
            with socket.socket() as probe:
                assert probe.connect_ex(("127.0.0.1", port)) != 0, f"round {round}: still listening"
        print("ok")
    """)
