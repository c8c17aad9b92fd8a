"""Initialize, Finalize, engine lifetime, threads and the context manager."""
import gc
import subprocess
import sys
import threading

import pytest
from support.caches import assert_disjoint, seed_desc
from support.workers import run_workers

import llmdd
import llmdd.sim
from llmdd import Cache, LlmDataDist, LlmRole


def new_engine():
    return LlmDataDist(0, LlmRole.kPrompt)


def test_constructor_checks_its_arguments():
    assert LlmDataDist(2**64 - 1, LlmRole.kMix).cluster_id == 2**64 - 1
    assert LlmDataDist(0, 2).role is LlmRole.kDecoder
    with pytest.raises(TypeError, match="cluster_id"):
        LlmDataDist("0", LlmRole.kPrompt)
    with pytest.raises(ValueError, match="cluster_id"):
        LlmDataDist(-1, LlmRole.kPrompt)
    with pytest.raises(ValueError):
        LlmDataDist(0, 7)
    with pytest.raises(TypeError, match="role"):
        LlmDataDist(0, "prompt")


def test_construction_touches_no_runtime():
    dd = new_engine()
    assert not dd.initialized and dd.device_id == -1


@pytest.mark.parametrize("options,device", [
    ({}, 0), ({"llm.DeviceId": "3"}, 3), ({"ge.exec.deviceId": "2"}, 2),
    ({"llm.DeviceId": "1", "ge.exec.deviceId": "1"}, 1), ({"llm.DeviceId": "007"}, 7),
    ({"some.UnknownKey": "whatever"}, 0),
])
def test_initialize_picks_the_device(options, device):
    with new_engine() as dd:
        assert dd.Initialize(options) == llmdd.LLM_SUCCESS
        assert dd.device_id == device
        cache = dd.allocate_cache(seed_desc())
        assert dd.DeallocateCache(cache.cache_id) == llmdd.LLM_SUCCESS


@pytest.mark.parametrize("options", [
    {"llm.DeviceId": ""}, {"llm.DeviceId": "-1"}, {"llm.DeviceId": "x"}, {"llm.DeviceId": " 1"},
    {"llm.DeviceId": "1.0"}, {"llm.DeviceId": "٣"}, {"llm.DeviceId": "99999999999"},
    {"ge.exec.deviceId": "+1"}, {"llm.DeviceId": "0", "ge.exec.deviceId": "1"},
    {"llm.DeviceId": "4096"},                      # parses, but no such device
    {"llm.SyncKvCacheWaitTime": "0"}, {"llm.SyncKvCacheWaitTime": "-5"}, {"llm.SyncKvCacheWaitTime": "1s"},
    {"llm.ListenIpInfo": "127.0.0.1"}, {"llm.ListenIpInfo": "1.2.3:80"}, {"llm.ListenIpInfo": "1.2.3.256:80"},
    {"llm.ListenIpInfo": "1.2.3.4:65536"}, {"llm.EnableSwitchRole": "yes"}, {"llm.EnableCacheManager": "true"},
    {"llmdd.TensorAlignment": "256"}, {"llmdd.TensorAlignment": "1000"}, {"llmdd.TensorAlignment": str(2**31)},
    {"llmdd.MallocPolicy": "fastest"},
    # JSON nested past the parser's recursion limit, and JSON far larger than any real config
    {"llm.MemPoolConfig": "[" * 100000}, {"llm.HostMemPoolConfig": "[" * 100000}, {"llm.BufPoolCfg": "[" * 100000},
    {"llm.MemPoolConfig": '{"memory_size": 1048576, "pad": "' + "x" * 100000 + '"}'},
])
def test_malformed_options_are_param_invalid(options):
    with new_engine() as dd:
        assert dd.Initialize(options) == llmdd.LLM_PARAM_INVALID
        assert not dd.initialized
        assert dd.AllocateCache(seed_desc(), Cache()) == llmdd.LLM_FAILED
        assert dd.Initialize({}) == llmdd.LLM_SUCCESS  # nothing half-made stays behind


def test_well_formed_known_options_are_accepted():
    # Port 0: the engine listens for links (llm.ListenIpInfo) on a port the system picks.
    options = {"llm.SyncKvCacheWaitTime": "1000", "llm.ListenIpInfo": "127.0.0.1:0",
               "llm.EnableSwitchRole": "1", "llmdd.TensorAlignment": str(2 << 20),
               "llmdd.MallocPolicy": "huge_only", "llmdd.TransferProtocol": "tcp",
               "llm.EnableRemoteCacheAccessible": "1"}
    with new_engine() as dd:
        assert dd.Initialize(options) == llmdd.LLM_SUCCESS


@pytest.mark.parametrize("options", [{"llmdd.TransferProtocol": "udp"}, {"llm.EnableRemoteCacheAccessible": "yes"},
                                     {"llmdd.LinkSecret": ""}])
def test_malformed_transfer_options_are_param_invalid(options):
    with new_engine() as dd:
        assert dd.Initialize(options) == llmdd.LLM_PARAM_INVALID
        assert not dd.initialized


def test_a_listen_address_this_host_lacks_fails_initialize_and_leaves_nothing_behind():
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): no host has it.
    with new_engine() as dd:
        assert dd.Initialize({"llm.ListenIpInfo": "192.0.2.1:26000"}) == llmdd.LLM_PARAM_INVALID
        assert not dd.initialized
        assert dd.AllocateCache(seed_desc(), Cache()) == llmdd.LLM_FAILED
        assert dd.Initialize({}) == llmdd.LLM_SUCCESS


@pytest.mark.parametrize("alignment", [512, 4096, 2 << 20])
def test_tensor_alignment_option(alignment):
    with new_engine() as dd:
        assert dd.Initialize({"llmdd.TensorAlignment": str(alignment)}) == llmdd.LLM_SUCCESS
        cache = dd.allocate_cache(llmdd.CacheDesc(5, [3], llmdd.DT_INT8))
        assert all(address % alignment == 0 for address in cache.tensor_addrs)


@pytest.mark.parametrize("options", [None, [("llm.DeviceId", "0")], {"llm.DeviceId": 0}, {1: "0"}])
def test_options_of_the_wrong_type_raise_type_error(options):
    with pytest.raises(TypeError):
        new_engine().Initialize(options)


def test_second_initialize_is_success_and_changes_nothing():
    with new_engine() as dd:
        assert dd.Initialize({"llm.DeviceId": "1"}) == llmdd.LLM_SUCCESS
        cache = dd.allocate_cache(seed_desc())
        assert dd.Initialize({"llm.DeviceId": "2"}) == llmdd.LLM_SUCCESS
        assert dd.device_id == 1
        assert dd.DeallocateCache(cache.cache_id) == llmdd.LLM_SUCCESS


def test_finalize_frees_live_caches_and_allows_a_new_initialize():
    dd = new_engine()
    assert dd.Initialize({}) == llmdd.LLM_SUCCESS
    free_before, _ = dd.device_memory_info()
    caches = [dd.allocate_cache(seed_desc()) for _ in range(5)]
    assert dd.device_memory_info()[0] < free_before
    dd.Finalize()
    dd.Finalize()  # a second Finalize is harmless
    assert not dd.initialized
    assert dd.Initialize({}) == llmdd.LLM_SUCCESS
    assert dd.device_memory_info()[0] == free_before
    assert all(dd.DeallocateCache(cache.cache_id) == llmdd.LLM_KV_CACHE_NOT_EXIST for cache in caches)
    dd.Finalize()


def test_finalize_of_one_engine_leaves_another_working():
    with new_engine() as first, new_engine() as second:
        assert first.Initialize({}) == llmdd.LLM_SUCCESS
        assert second.Initialize({}) == llmdd.LLM_SUCCESS
        kept = second.allocate_cache(seed_desc())
        first.Finalize()
        assert second.allocate_cache(seed_desc()).cache_id > kept.cache_id
        assert second.DeallocateCache(kept.cache_id) == llmdd.LLM_SUCCESS


def test_context_manager_finalizes():
    with new_engine() as dd:
        assert dd.Initialize({}) == llmdd.LLM_SUCCESS
        dd.allocate_cache(seed_desc())
    assert not dd.initialized


@pytest.mark.sim_only
def test_dropping_an_engine_without_finalize_frees_its_memory():
    with new_engine() as witness:  # keeps the runtime up so usage can be read after the drop
        assert witness.Initialize({}) == llmdd.LLM_SUCCESS
        before = llmdd.sim.device_usage(0)
        dd = new_engine()
        assert dd.Initialize({}) == llmdd.LLM_SUCCESS
        for _ in range(10):
            dd.allocate_cache(seed_desc())
        assert llmdd.sim.device_usage(0)[1] == before[1] + 10
        del dd
        gc.collect()
        assert llmdd.sim.device_usage(0) == before


def test_allocate_and_deallocate_from_a_thread_that_did_not_initialize(engine):
    results = {}

    def worker():
        cache = Cache()
        results["allocate"] = engine.AllocateCache(seed_desc(), cache)
        results["deallocate"] = engine.DeallocateCache(cache.cache_id)
        results["free"] = engine.device_memory_info()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert results["allocate"] == llmdd.LLM_SUCCESS
    assert results["deallocate"] == llmdd.LLM_SUCCESS


def test_concurrent_allocations_never_overlap(engine):
    spans = []
    lock = threading.Lock()

    def worker(seed):
        for round_ in range(50):
            desc = llmdd.CacheDesc(4, [64 + seed + round_], llmdd.DT_INT8)
            cache = engine.allocate_cache(desc)
            with lock:
                spans.extend((address, address + desc.size) for address in cache.tensor_addrs)

    assert run_workers(worker, 4) == []
    assert len(spans) == 4 * 50 * 4
    assert_disjoint(spans)


def test_cache_ids_start_at_one_in_a_fresh_process():
    script = ("import llmdd\n"
              "dd = llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt)\n"
              "assert dd.Initialize({}) == llmdd.LLM_SUCCESS\n"
              "print([dd.allocate_cache(llmdd.CacheDesc(1, [1], llmdd.DT_INT8)).cache_id for _ in range(3)])\n")
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[1, 2, 3]"


@pytest.mark.sim_only
def test_a_forked_child_cannot_free_or_corrupt_the_parents_caches():
    import ctypes
    import json
    import os

    with new_engine() as dd:
        assert dd.Initialize({"llm.MemPoolConfig": '{"memory_size": 16777216}'}) == llmdd.LLM_SUCCESS
        plain = LlmDataDist(1, LlmRole.kPrompt)
        assert plain.Initialize({}) == llmdd.LLM_SUCCESS
        caches = [dd.allocate_cache(seed_desc()), plain.allocate_cache(seed_desc())]
        for index, cache in enumerate(caches):
            ctypes.memset(cache.tensor_addrs[0], 0x40 + index, 512)
        usage, frees = llmdd.sim.device_usage(0), llmdd.sim.call_count("aclrtFree")
        reader, writer = os.pipe()
        child = os.fork()
        if child == 0:
            try:
                results = [int(dd.AllocateCache(seed_desc(), Cache())), int(plain.DeallocateCache(caches[1].cache_id)),
                           int(dd.Initialize({}))]
                plain.Finalize()
                dd.Finalize()
                del plain
                gc.collect()
                results.append(llmdd.sim.call_count("aclrtFree") - frees)
                ctypes.memset(caches[0].tensor_addrs[0], 0, 512)       # the child's own copy
                with new_engine() as fresh:
                    results.append(int(fresh.Initialize({})))
                    results.append(int(fresh.DeallocateCache(fresh.allocate_cache(seed_desc()).cache_id)))
                os.write(writer, json.dumps(results).encode())
            finally:
                os._exit(0)
        os.close(writer)
        with os.fdopen(reader) as pipe:
            results = json.loads(pipe.read())
        os.waitpid(child, 0)
        failed = int(llmdd.LLM_FAILED)
        assert results == [failed, failed, failed, 0, 0, 0]
        assert [ctypes.string_at(cache.tensor_addrs[0], 512) for cache in caches] == [b"\x40" * 512, b"\x41" * 512]
        assert llmdd.sim.device_usage(0) == usage
        assert dd.DeallocateCache(caches[0].cache_id) == llmdd.LLM_SUCCESS
        assert plain.DeallocateCache(caches[1].cache_id) == llmdd.LLM_SUCCESS
        plain.Finalize()


def test_a_cache_of_an_earlier_initialization_never_stands_for_a_newer_one_with_its_id():
    # The old Cache's addresses are the freed memory of the old cache, and v2 would give its id
    # to the new one (llmdd's ids go on across initializations instead).
    options = {"llm.EnableCacheManager": "1"}
    with new_engine() as dd:
        assert dd.Initialize(options) == llmdd.LLM_SUCCESS
        old = dd.allocate_cache(seed_desc())
        dd.Finalize()
        assert dd.Initialize(options) == llmdd.LLM_SUCCESS
        new = dd.allocate_cache(seed_desc())
        assert new.cache_id != old.cache_id
        assert dd.CopyKvCache(old, new) == llmdd.LLM_KV_CACHE_NOT_EXIST
        assert dd.CopyKvCache(new, old) == llmdd.LLM_KV_CACHE_NOT_EXIST
        with pytest.raises(ValueError):
            old.tensor(0)
        with pytest.raises(ValueError):
            old.region()
        assert new.tensor(0) is not None
