"""Test support for llmdd.transfer: a registry over numpy memory with the engine registry's
interface, byte patterns, and a peer process driven by JSON lines.

`python tests/transfer_support.py CLUSTER_ID LISTEN_IP REGISTRY` runs a peer: it serves its caches
on LISTEN_IP (a free port the system picks, printed first) from a LocalRegistry ("local") or
llmdd's own engine and CacheRegistry ("engine"), and answers one JSON command per line.
"""
import contextlib
import ctypes
import json
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import numpy

HERE = os.path.dirname(os.path.abspath(__file__))
PEER_START_SECONDS = 20
PEER_ANSWER_SECONDS = 20


@dataclass(frozen=True)
class Entry:
    """The CacheEntry interface: what the registry knows of one cache."""
    cache_id: int
    num_tensors: int
    tensor_addrs: tuple
    tensor_bytes: int
    batch: int
    block_bytes: int
    placement: int
    is_blocks_cache: bool
    remote_accessible: bool
    regions: tuple


class LocalRegistry:
    """The CacheRegistry interface over numpy memory: one slab per cache (or one array per tensor
    when `per_tensor`), key references, pins that defer a deallocation until they end."""

    def __init__(self):
        self._lock = threading.Lock()
        self._next_id = 1
        self._entries = {}      # cache_id -> Entry
        self._memory = {}       # cache_id -> the numpy arrays behind it
        self._keys = {}         # key -> (cache_id, batch index)
        self._pins = {}         # cache_id -> count
        self._deallocated = set()

    def allocate(self, num_tensors, batch, block_bytes, blocks=False, keys=(), remote_accessible=False,
                 per_tensor=False):
        tensor_bytes = batch * block_bytes
        if per_tensor:
            arrays = [numpy.zeros(tensor_bytes, numpy.uint8) for _ in range(num_tensors)]
            addrs = tuple(a.ctypes.data for a in arrays)
            regions = tuple((a.ctypes.data, tensor_bytes) for a in arrays)
        else:
            slab = numpy.zeros(num_tensors * tensor_bytes, numpy.uint8)
            arrays = [slab]
            addrs = tuple(slab.ctypes.data + t * tensor_bytes for t in range(num_tensors))
            regions = ((slab.ctypes.data, slab.nbytes),)
        with self._lock:
            if any(key in self._keys for key in keys):
                raise ValueError("a key already names a cache")   # as CacheRegistry refuses it
            cache_id = self._next_id
            self._next_id += 1
            entry = Entry(cache_id, num_tensors, addrs, tensor_bytes, batch, block_bytes, 0, blocks,
                          remote_accessible, regions)
            self._entries[cache_id] = entry
            self._memory[cache_id] = arrays
            for index, key in enumerate(keys):
                self._keys[key] = (cache_id, 0 if blocks else index)
        return entry

    def tensor(self, cache_id, index):
        entry = self._entries[cache_id]
        arrays = self._memory[cache_id]
        if len(arrays) == entry.num_tensors and entry.num_tensors > 1:
            return arrays[index]
        return arrays[0][index * entry.tensor_bytes:(index + 1) * entry.tensor_bytes]

    def deallocate(self, cache_id):
        with self._lock:
            self._deallocated.add(cache_id)
            self._free_if_unheld(cache_id)

    def is_freed(self, cache_id):
        with self._lock:
            return cache_id not in self._entries

    def pin_count(self, cache_id):
        with self._lock:
            return self._pins.get(cache_id, 0)

    def _free_if_unheld(self, cache_id):
        held = self._pins.get(cache_id, 0) or any(c == cache_id for c, _ in self._keys.values())
        if cache_id in self._deallocated and not held and cache_id in self._entries:
            del self._entries[cache_id], self._memory[cache_id]

    # The CacheRegistry interface

    def entry(self, cache_id):
        with self._lock:
            return None if cache_id in self._deallocated else self._entries.get(cache_id)

    def find(self, key):
        with self._lock:
            found = self._keys.get(key)
            return None if found is None else (self._entries[found[0]], found[1])

    @contextlib.contextmanager
    def pin(self, cache_id):
        with self._lock:
            if cache_id not in self._entries:
                raise LookupError(f"cache {cache_id} does not exist")
            self._pins[cache_id] = self._pins.get(cache_id, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._pins[cache_id] -= 1
                self._free_if_unheld(cache_id)

    def release_key(self, key):
        with self._lock:
            found = self._keys.pop(key, None)
            if found is not None:
                self._free_if_unheld(found[0])
        return 0


def free_port(ip="127.0.0.1"):
    """A port nobody listens on now (what binds it next may race another process: rare)."""
    with socket.socket() as probe:
        probe.bind((ip, 0))
        return probe.getsockname()[1]


def listening(port, ip="127.0.0.1"):
    with socket.socket() as probe:
        return probe.connect_ex((ip, port)) == 0


def mooncake_missing():
    """Why Mooncake cannot be used here (the tests that need it skip with this), or None."""
    try:
        import mooncake.engine  # noqa: F401
    except ImportError as error:
        return f"Mooncake's Transfer Engine is not usable here (pip install 'llmdd[transfer]', libibverbs1): {error}"
    return None


class EngineRegistry:
    """llmdd's own CacheRegistry over an initialized LlmDataDist, with the few extra calls the
    peer makes (allocate by shape, tensor bytes, is_freed), so the same tests run against it."""

    def __init__(self, cluster_id):
        import llmdd
        from llmdd._registry import CacheRegistry
        self._engine = llmdd.LlmDataDist(cluster_id, llmdd.LlmRole.kPrompt)
        assert self._engine.Initialize({"llm.DeviceId": "0"}) == llmdd.LLM_SUCCESS
        self._registry = CacheRegistry(self._engine)
        self._caches = {}
        self._memory = []   # the registered caches' memory, owned here as a caller owns it

    def __getattr__(self, name):   # entry, find, pin, release_key, deallocate: the registry's own
        return getattr(self._registry, name)

    def allocate(self, num_tensors, batch, block_bytes, blocks=False, keys=(), remote_accessible=False,
                 per_tensor=False):
        import llmdd
        desc = llmdd.CacheDesc(num_tensors, [batch, block_bytes], llmdd.DT_UINT8)
        cache = llmdd.Cache()
        if remote_accessible:
            # Only caller-owned (registered) caches are remote-accessible in LLM-DataDist v2.
            memory = [numpy.zeros(batch * block_bytes, numpy.uint8) for _ in range(num_tensors)]
            status = self._registry.register(desc, [m.ctypes.data for m in memory], cache, keys,
                                             is_blocks_cache=blocks, remote_accessible=True)
            self._memory.append(memory)
        else:
            status = self._registry.allocate(desc, cache, keys, is_blocks_cache=blocks)
        assert status == llmdd.LLM_SUCCESS, status
        self._caches[cache.cache_id] = cache
        return self._registry.entry(cache.cache_id)

    def tensor(self, cache_id, index):
        entry = self._registry.entry(cache_id)
        return numpy.ctypeslib.as_array((ctypes.c_uint8 * entry.tensor_bytes).from_address(entry.tensor_addrs[index]))

    def is_freed(self, cache_id):
        return self._registry.entry(cache_id) is None

    def close(self):
        self._engine.Finalize()


def pattern(cluster_id, cache_id, tensor, nbytes):
    """Bytes that differ per cluster, cache and tensor and along the tensor."""
    return ((numpy.arange(nbytes, dtype=numpy.uint64) * 7 + cluster_id * 131 + cache_id * 17 + tensor * 29)
            % 251).astype(numpy.uint8)


def fill(registry, cluster_id, entry):
    for t in range(entry.num_tensors):
        registry.tensor(entry.cache_id, t)[:] = pattern(cluster_id, entry.cache_id, t, entry.tensor_bytes)


def make_key(fields):
    from llmdd.llm_datadist import BlocksCacheKey, CacheKey, CacheKeyByIdAndIndex
    kind = fields.pop("kind")
    return {"cache": CacheKey, "blocks": BlocksCacheKey, "id": CacheKeyByIdAndIndex}[kind](**fields)


class Cluster:
    """What TransferAgent.link takes for a cluster."""

    def __init__(self, remote_cluster_id, remote_ip, remote_port, local_ip=None):
        self.remote_cluster_id = remote_cluster_id
        self.remote_role_type = 0
        self.remote_ip_infos = [(remote_ip, remote_port)]
        self.local_ip_infos = [(local_ip, 0)] if local_ip else []


class Peer:
    """A peer process on this machine (or in a network namespace, with `prefix`): this module's
    (a TransferAgent over `registry`), or another `script` taking the same arguments."""

    def __init__(self, cluster_id, listen_ip="127.0.0.1", prefix=(), registry="local", script="transfer_support.py"):
        self.cluster_id = cluster_id
        self.process = subprocess.Popen([*prefix, sys.executable, os.path.join(HERE, script),
                                         str(cluster_id), listen_ip, registry],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.process.stdout, selectors.EVENT_READ)
        self.port = self._answer(PEER_START_SECONDS)["port"]
        self.ip = listen_ip

    def _answer(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._selector.select(deadline - time.monotonic()):
                line = self.process.stdout.readline()
                if not line:
                    break
                return json.loads(line)
        self.kill()
        raise AssertionError(f"peer {self.cluster_id} gave no answer in {seconds} s; stderr:\n"
                             f"{self.process.stderr.read()[-4000:]}")

    def call(self, op, **arguments):
        self.process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        self.process.stdin.flush()
        answer = self._answer(PEER_ANSWER_SECONDS)
        if "error" in answer:
            raise AssertionError(f"peer {self.cluster_id}: {answer['error']}")
        return answer

    def cluster(self, local_ip=None):
        return Cluster(self.cluster_id, self.ip, self.port, local_ip)

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)

    def close(self):
        with contextlib.suppress(OSError, ValueError):   # a killed peer's pipe may be broken
            self.process.stdin.close()
        if self.process.poll() is None:
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        for stream in (self.process.stdout, self.process.stderr):
            stream.close()
        self._selector.close()


def _serve(cluster_id, listen_ip, registry_kind):
    """The peer's main loop: one JSON command a line on stdin, one JSON answer a line on stdout."""
    from llmdd.transfer import TransferAgent

    registry = EngineRegistry(cluster_id) if registry_kind == "engine" else LocalRegistry()
    agent = TransferAgent(registry, cluster_id, f"{listen_ip}:0")
    print(json.dumps({"port": agent.listen_address[1]}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        op = command.pop("op")
        try:
            if op == "allocate":
                keys = [make_key(k) for k in command.pop("keys", [])]
                with_pattern = command.pop("fill", True)
                entry = registry.allocate(keys=keys, **command)
                if with_pattern:
                    fill(registry, cluster_id, entry)
                answer = {"cache_id": entry.cache_id}
            elif op == "deallocate":
                registry.deallocate(command["cache_id"])
                answer = {}
            elif op == "is_freed":
                answer = {"freed": registry.is_freed(command["cache_id"])}
            elif op == "tensor":
                answer = {"hex": registry.tensor(command["cache_id"], command["index"]).tobytes().hex()}
            elif op == "link":
                cluster = Cluster(command["cluster_id"], command["ip"], command["port"], command.get("local_ip"))
                status, statuses = agent.link([cluster], command.get("timeout_ms", 3000))
                answer = {"status": int(status)}
            elif op == "pull_blocks":
                entry = registry.entry(command["cache_id"])
                status = agent.pull_blocks(command["remote"], make_key(command["key"]), entry,
                                           command["src_blocks"], command["dst_blocks"])
                answer = {"status": int(status)}
            else:
                answer = {"error": f"unknown op {op}"}
        except Exception as error:  # reported to the test, which fails with it
            answer = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(answer), flush=True)
    agent.close()
    if registry_kind == "engine":
        registry.close()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2], sys.argv[3])
