"""IPC memory, the same-host transfer path's runtime part (docs/facts.md section 10): an engine
exports device memory to one peer process, the peer imports the key, both copy through it, and
the key is closed. ACL's rules are checked on the host runtime itself by a C program across
forked processes; the engine's calls across real processes with tests/support/peer.py."""
import ctypes
import os
import pathlib
import shutil
import subprocess

import pytest

import llmdd
from llmdd import CacheDesc
from support.peer import Peer

SOURCE = pathlib.Path(__file__).resolve().parents[2] / "src" / "llmdd"
CHECKS = pathlib.Path(__file__).resolve().parent / "c" / "acl_ipc_rules.c"
REFUSED = 507899           # ACL_ERROR_RT_DRV_INTERNAL_ERROR: how ACL reports its driver's refusals
MIB = 1 << 20

pytestmark = pytest.mark.sim_only


@pytest.fixture
def exported_cache(engine):
    """A 2 MiB device cache of the test's engine (the host runtime exports 1 MiB or more), its
    first byte 0x5A."""
    cache = engine.allocate_cache(CacheDesc(1, [2 * MIB], llmdd.DT_UINT8))
    ctypes.memset(cache.tensor_addrs[0], 0x5A, 2 * MIB)
    yield cache
    engine.deallocate_cache(cache)


@pytest.fixture
def importer():
    """A process of its own with an initialized engine `engine` and its pid in `pid`."""
    peer = Peer.dropin()
    try:
        peer.run("import llmdd\n"
                 "engine = llmdd.LlmDataDist(7, llmdd.LlmRole.kDecoder)\n"
                 "assert engine.Initialize({}) == llmdd.LLM_SUCCESS\n"
                 "status, pid = engine._ipc_pid()\n"
                 "assert status == llmdd.LLM_SUCCESS\n"
                 "result = pid")
        yield peer
        peer.run("engine.Finalize()")
    finally:
        peer.close(check=True)


def peer_pid(peer):
    return peer.run("result = pid")


def import_in(peer, key):
    """(status, the first byte there) of the peer importing `key`."""
    return peer.run("import ctypes\n"
                    f"status, address, nbytes = engine._ipc_import({key!r})\n"
                    "result = [int(status), ctypes.string_at(address, 1)[0] if address else None]")


def acl_error(engine, status, call):
    """The ACL error LLMException reports for a failed IPC call."""
    message = str(engine._exception(status, call))
    return int(message.split("ACL error ")[1].split(":")[0])


def test_host_runtime_keeps_acls_ipc_rules(tmp_path):
    compiler = shutil.which(os.environ.get("CC", "cc"))
    assert compiler, "a C compiler is needed to build the host runtime's checks"
    program = tmp_path / "acl_ipc_rules"
    subprocess.run([compiler, "-std=c11", "-O1", "-Wall", "-Werror", f"-I{SOURCE}", str(CHECKS),
                    str(SOURCE / "sim" / "acl_host.c"), "-o", str(program), "-lpthread"], check=True)
    # Without the sanitizer runtimes tools/sanitize.sh preloads: in this uninstrumented program
    # they only add descriptors and mappings of their own, which its no-leak check counts.
    environment = {name: value for name, value in os.environ.items() if name != "LD_PRELOAD"}
    result = subprocess.run([str(program)], capture_output=True, text=True, timeout=120,
                            env=dict(environment, LLMDD_SIM_DEVICE_MEMORY="64MiB"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "0 failed"


def test_a_peer_allowed_by_pid_reads_and_writes_the_exported_bytes(engine, exported_cache, importer):
    address = exported_cache.tensor_addrs[0]
    status, key = engine._ipc_export(address, MIB, peer_pid(importer))
    assert status == llmdd.LLM_SUCCESS and 0 < len(key) < 65
    assert import_in(importer, key) == [int(llmdd.LLM_SUCCESS), 0x5A]
    importer.run("ctypes.memset(address, 0xC3, 4096)")
    assert ctypes.string_at(address, 4097) == b"\xc3" * 4096 + b"\x5a"
    assert importer.run(f"result = int(engine._ipc_close({key!r}))") == llmdd.LLM_SUCCESS
    assert engine._ipc_close(key) == llmdd.LLM_SUCCESS


def test_the_peer_copies_both_ways_between_its_cache_and_the_import(engine, exported_cache, importer):
    address = exported_cache.tensor_addrs[0]
    _, key = engine._ipc_export(address, MIB, peer_pid(importer))
    answer = importer.run(
        "import ctypes\n"
        f"status, imported, nbytes = engine._ipc_import({key!r})\n"
        f"assert nbytes == {MIB}, nbytes\n"
        "mine = engine.allocate_cache(llmdd.CacheDesc(1, [8192], llmdd.DT_UINT8))\n"
        "local = mine.tensor_addrs[0]\n"
        "pulled = engine._ipc_copy([local], [imported + 4096], [8192])\n"
        "ctypes.memset(local, 0x77, 100)\n"
        "pushed = engine._ipc_copy([imported, imported + 200], [local, local + 50], [100, 50])\n"
        "past_the_export = engine._ipc_copy([imported + (1 << 20) - 10], [local], [100])\n"
        "result = [int(pulled), ctypes.string_at(local + 100, 8092) == b'\\x5a' * 8092, int(pushed),\n"
        "          int(past_the_export)]\n"
        f"engine._ipc_close({key!r})\n"
        "engine.deallocate_cache(mine)")
    assert answer == [int(llmdd.LLM_SUCCESS), True, int(llmdd.LLM_SUCCESS), int(llmdd.LLM_FAILED)]
    assert ctypes.string_at(address, 250) == b"\x77" * 100 + b"\x5a" * 100 + b"\x77" * 50
    engine._ipc_close(key)


def test_a_process_whose_pid_was_not_allowed_is_refused(engine, exported_cache, importer):
    status, key = engine._ipc_export(exported_cache.tensor_addrs[0], MIB, peer_pid(importer) + 100000)
    assert status == llmdd.LLM_SUCCESS
    assert import_in(importer, key) == [int(llmdd.LLM_FAILED), None]
    assert importer.run("result = str(engine._exception(status, 'import'))").count(f"ACL error {REFUSED}") == 1
    engine._ipc_close(key)


def test_after_close_the_key_is_refused_even_to_the_allowed_pid(engine, exported_cache, importer):
    _, key = engine._ipc_export(exported_cache.tensor_addrs[0], MIB, peer_pid(importer))
    assert engine._ipc_close(key) == llmdd.LLM_SUCCESS
    assert import_in(importer, key) == [int(llmdd.LLM_FAILED), None]
    status = engine._ipc_close(key)
    assert status == llmdd.LLM_FAILED and acl_error(engine, status, "close") == REFUSED


def test_deallocating_exported_memory_withdraws_its_export(engine, importer):
    cache = engine.allocate_cache(CacheDesc(1, [MIB], llmdd.DT_UINT8))
    _, key = engine._ipc_export(cache.tensor_addrs[0], MIB, peer_pid(importer))
    engine.deallocate_cache(cache)
    assert import_in(importer, key) == [int(llmdd.LLM_FAILED), None]


def test_memory_the_runtime_cannot_share_is_refused(engine, exported_cache):
    small = engine.allocate_cache(CacheDesc(1, [4096], llmdd.DT_UINT8))
    host = ctypes.create_string_buffer(8192)
    cases = [(small.tensor_addrs[0], 4096),                          # under 1 MiB: malloc-backed
             (ctypes.addressof(host), 4096),                         # not device memory
             (exported_cache.tensor_addrs[0], 4 * MIB),              # past its allocation
             (exported_cache.tensor_addrs[0] + 64, 4096)]            # not at a page boundary
    for address, nbytes in cases:
        status, key = engine._ipc_export(address, nbytes, os.getpid())
        assert (status, key) == (llmdd.LLM_FAILED, "") and acl_error(engine, status, "export") == REFUSED
    engine.deallocate_cache(small)


def test_the_exporting_process_cannot_import_its_own_key(engine, exported_cache):
    _, key = engine._ipc_export(exported_cache.tensor_addrs[0], MIB, os.getpid())
    status, address, _ = engine._ipc_import(key)
    assert (status, address) == (llmdd.LLM_FAILED, 0)
    assert acl_error(engine, status, "import") == 107017   # ACL_ERROR_RT_INVALID_HANDLE
    engine._ipc_close(key)


def test_bad_arguments_are_statuses_and_wrong_types_raise(engine, exported_cache):
    address = exported_cache.tensor_addrs[0]
    invalid = llmdd.LLM_PARAM_INVALID
    assert engine._ipc_export(0, MIB, 1) == (invalid, "")
    assert engine._ipc_export(address, 0, 1) == (invalid, "")
    assert engine._ipc_export(address, MIB, 0) == (invalid, "")
    assert engine._ipc_export(address, MIB, 1 << 31) == (invalid, "")
    assert engine._ipc_export(address, (1 << 64) - address, 1) == (invalid, "")
    for key in ["", "k" * 65, "ключ", "a\0b"]:
        assert engine._ipc_import(key) == (invalid, 0, 0)
        assert engine._ipc_close(key) == invalid
    assert engine._ipc_import("llmdd-not-a-key") == (llmdd.LLM_FAILED, 0, 0)
    assert engine._ipc_copy([], [], []) == invalid
    assert engine._ipc_copy([address], [address + 64], []) == invalid
    assert engine._ipc_copy([address], [address + 64], [0]) == invalid
    assert engine._ipc_copy([address], [address + 64], [-1]) == invalid
    with pytest.raises(TypeError):
        engine._ipc_import(b"llmdd")
    with pytest.raises(TypeError):
        engine._ipc_export(float(address), MIB, 1)
    with pytest.raises(TypeError):
        engine._ipc_copy([address], ["0"], [1])


def test_copies_within_the_engine_are_device_to_device_only(engine, exported_cache):
    address = exported_cache.tensor_addrs[0]
    ctypes.memset(address + MIB, 0x11, 64)
    assert engine._ipc_copy([address], [address + MIB], [64]) == llmdd.LLM_SUCCESS
    assert ctypes.string_at(address, 65) == b"\x11" * 64 + b"\x5a"
    host = ctypes.create_string_buffer(64)
    status = engine._ipc_copy([ctypes.addressof(host)], [address], [64])
    assert status == llmdd.LLM_FAILED and "ACL error" in str(engine._exception(status, "copy"))


def test_an_engine_that_is_not_initialized_fails_every_ipc_call():
    engine = llmdd.LlmDataDist(3, llmdd.LlmRole.kPrompt)
    failed = llmdd.LLM_FAILED
    assert engine._ipc_pid() == (failed, -1)
    assert engine._ipc_export(4096, MIB, 1) == (failed, "")
    assert engine._ipc_import("llmdd") == (failed, 0, 0)
    assert engine._ipc_close("llmdd") == failed
    assert engine._ipc_copy([4096], [8192], [1]) == failed


def test_the_ipc_pid_is_the_process_id(engine):
    assert engine._ipc_pid() == (llmdd.LLM_SUCCESS, os.getpid())


def test_an_export_whose_pid_cannot_be_set_is_closed_again(engine, exported_cache):
    import llmdd.sim

    exports, closes = llmdd.sim.call_count("aclrtIpcMemGetExportKey"), llmdd.sim.call_count("aclrtIpcMemClose")
    llmdd.sim.inject_failure("aclrtIpcMemSetImportPid", 1, REFUSED)
    assert engine._ipc_export(exported_cache.tensor_addrs[0], MIB, 1) == (llmdd.LLM_FAILED, "")
    assert llmdd.sim.call_count("aclrtIpcMemGetExportKey") == exports + 1
    assert llmdd.sim.call_count("aclrtIpcMemClose") == closes + 1
