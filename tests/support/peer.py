"""The peer process: the other side of a link, in a process of its own, for every test that needs one.

The test starts one side with Peer.agent, Peer.engine or Peer.dropin and drives it one JSON line
at a time. There are two commands:

- call(op, **arguments): one of the side's own commands (allocate, link, pull_blocks, ...), for
  the calls that take plain values; answered with a dict;
- run(code): a Python snippet run in the side's namespace, for the drop-in, whose samples are
  code; answered with the snippet's `result`.

A command that raises is answered {"error": type name, "status": status_code or None, "message": ...};
call() and run() turn that into an AssertionError, failure() returns it. At the end of its input
the side closes what it made (its agent, its engine, the snippets' `datadist`) and exits.

The sides (`python tests/support/peer.py SIDE CLUSTER_ID LISTEN_IP OPTION`, which prints
{"port": ...} once it is ready):

- agent: a TransferAgent listening on LISTEN_IP (a port the system picks) over a LocalRegistry
  (OPTION "local") or llmdd's engine and CacheRegistry (OPTION "engine");
- engine: an llmdd.LlmDataDist listening on llm.ListenIpInfo at a free port (OPTION "1" makes its
  caches remote-accessible, llm.EnableRemoteCacheAccessible);
- dropin: llmdd.llm_datadist's names, numpy and the pattern helpers; the snippets make the rest.
"""
import json
import os
import selectors
import subprocess
import sys
import threading
import time

if __name__ == "__main__":   # run as a script: make `support` importable, as pytest's pythonpath does
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy  # noqa: E402

from support.network import free_port  # noqa: E402
from support.patterns import cache_tensor, fill_pattern, memory, pattern  # noqa: E402
from support.registries import Cluster, EngineRegistry, LocalRegistry, make_key  # noqa: E402

START_SECONDS = 30    # a peer importing llmdd and starting Mooncake on a busy 2-core machine
ANSWER_SECONDS = 30   # every answer is bounded, so a hung peer fails the test instead of hanging it
END_SECONDS = 30      # a peer that finalized a linked engine takes a few seconds to exit
LISTEN_ATTEMPTS = 20  # the engine side binds a port free_port found; another process may take it first


class Peer:
    """The peer process, seen from the test."""

    def __init__(self, side, cluster_id=0, listen_ip="127.0.0.1", option="", prefix=()):
        self.cluster_id = cluster_id
        self.ip = listen_ip
        self.process = subprocess.Popen([*prefix, sys.executable, os.path.abspath(__file__), side, str(cluster_id),
                                         listen_ip, option],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.process.stdout, selectors.EVENT_READ)
        self.port = self._answer(START_SECONDS)["port"]

    @classmethod
    def agent(cls, cluster_id, listen_ip="127.0.0.1", registry="local", prefix=()):
        """A TransferAgent over a LocalRegistry ("local") or llmdd's engine ("engine"); `prefix`
        runs it elsewhere (e.g. ("ip", "netns", "exec", NAME))."""
        return cls("agent", cluster_id, listen_ip, registry, prefix)

    @classmethod
    def engine(cls, cluster_id, remote_accessible=False):
        """An llmdd.LlmDataDist (the C++ API) listening on 127.0.0.1."""
        return cls("engine", cluster_id, option="1" if remote_accessible else "0")

    @classmethod
    def dropin(cls):
        """A process running llmdd.llm_datadist snippets (one side of CANN's samples)."""
        return cls("dropin")

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

    def _send(self, message):
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        return self._answer(ANSWER_SECONDS)

    def call(self, op, **arguments):
        """The side's command `op`: its answer (a dict); AssertionError if it raised."""
        answer = self._send({"op": op, **arguments})
        if "error" in answer:
            raise AssertionError(f"peer {self.cluster_id}: {answer['error']}: {answer['message']}")
        return answer

    def run(self, code):
        """The snippet's `result`; AssertionError if it raised."""
        answer = self._send({"code": code})
        if "error" in answer:
            raise AssertionError(f"the peer raised {answer['error']} ({answer['status']}): {answer['message']}")
        return answer["result"]

    def failure(self, code):
        """(exception type name, status code or None) of a snippet that must raise."""
        answer = self._send({"code": code})
        assert "error" in answer, f"the peer's snippet did not raise: {code}"
        return answer["error"], answer["status"]

    def cluster(self, local_ip=None):
        """This peer as TransferAgent.link takes a cluster."""
        return Cluster(self.cluster_id, self.ip, self.port, local_ip)

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(END_SECONDS)

    def end(self):
        """Ends the peer's input and returns at once: the peer closes what it made meanwhile
        (seconds, for a linked engine), so its close() then waits less."""
        if self.process.stdin is not None:
            try:
                self.process.stdin.close()
            except BrokenPipeError:   # the peer is gone already
                pass
            self.process.stdin = None   # so communicate() in close() leaves it alone

    def close(self, check=False):
        """Ends the peer (end of input: it closes what it made and exits) and its pipes; a peer
        that does not end is killed. check: it must have ended by itself with exit code 0, and
        close() waits to see it; otherwise the peer's seconds of closing (Mooncake's, once it
        linked) run in the background while the tests go on, and reap() waits for them."""
        if not check:
            self.end()
            waiter = threading.Thread(target=self._wait_out, name=f"peer-{self.cluster_id}-close", daemon=True)
            waiter.start()
            _closing.append(waiter)
            return
        self._wait_out(check)

    def _wait_out(self, check=False):
        try:
            _, stderr = self.process.communicate(timeout=END_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, stderr = self.process.communicate()
            if check:
                raise AssertionError(f"peer {self.cluster_id} did not end in {END_SECONDS} s") from None
        finally:
            self._selector.close()
        if check:
            assert self.process.returncode == 0, stderr[-4000:]


_closing = []   # the threads waiting out peers closed without a check


def reap():
    """Waits for every peer closed in the background to end (the root conftest calls it at the
    session's end, so no peer outlives the run)."""
    while _closing:
        _closing.pop().join()


# The peer process's side of it

def _agent_side(cluster_id, listen_ip, registry_kind):
    """A TransferAgent over a registry: (namespace, commands, port, close)."""
    from llmdd.transfer import TransferAgent

    registry = EngineRegistry(cluster_id) if registry_kind == "engine" else LocalRegistry()
    agent = TransferAgent(registry, cluster_id, f"{listen_ip}:0")

    def allocate(keys=(), fill=True, **shape):   # fill: each tensor gets pattern(cluster, cache, tensor)
        entry = registry.allocate(keys=[make_key(k) for k in keys], **shape)
        if fill:
            for t in range(entry.num_tensors):
                fill_pattern(registry.tensor(entry.cache_id, t), cluster_id, entry.cache_id, t)
        return {"cache_id": entry.cache_id}

    def deallocate(cache_id):
        registry.deallocate(cache_id)
        return {}

    def link(cluster_id, ip, port, local_ip=None, timeout_ms=3000):
        status, _ = agent.link([Cluster(cluster_id, ip, port, local_ip)], timeout_ms)
        return {"status": int(status)}

    def pull_blocks(remote, key, cache_id, src_blocks, dst_blocks):
        status = agent.pull_blocks(remote, make_key(key), registry.entry(cache_id), src_blocks, dst_blocks)
        return {"status": int(status)}

    def pull_blocks_at_once(pulls):
        """Each pull (pull_blocks' arguments) on a thread of its own, all started together: their
        statuses in order (a pull that raised: what it raised). The test's bound on the answer
        bounds the threads too."""
        statuses = [None] * len(pulls)

        def run(index, pull):
            try:
                statuses[index] = pull_blocks(**pull)["status"]
            except Exception as error:   # a transfer call must not raise: the test reports it
                statuses[index] = f"raised {error!r}"
        threads = [threading.Thread(target=run, args=item) for item in enumerate(pulls)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return {"statuses": statuses}

    def close():
        agent.close()
        if registry_kind == "engine":
            registry.close()

    commands = {
        "allocate": allocate, "deallocate": deallocate, "link": link, "pull_blocks": pull_blocks,
        "pull_blocks_at_once": pull_blocks_at_once, "is_freed": lambda cache_id: {"freed": registry.is_freed(cache_id)},
        "tensor": lambda cache_id, index: {"hex": registry.tensor(cache_id, index).tobytes().hex()},
    }
    return {"agent": agent, "registry": registry}, commands, agent.listen_address[1], close


def _engine_side(cluster_id, listen_ip, remote_accessible):
    """An llmdd.LlmDataDist listening for links: (namespace, commands, port, close)."""
    import llmdd

    engine = llmdd.LlmDataDist(cluster_id, llmdd.LlmRole.kPrompt)
    for _ in range(LISTEN_ATTEMPTS):
        port = free_port(listen_ip)
        status = engine.Initialize({"llm.ListenIpInfo": f"{listen_ip}:{port}", "llm.SyncKvCacheWaitTime": "3000",
                                    "llm.EnableRemoteCacheAccessible": remote_accessible})
        if status == llmdd.LLM_SUCCESS:
            break
    else:
        raise SystemExit(f"cannot listen on {listen_ip}: {status!r}")
    caches = {}

    def allocate(num_tensors, batch, block_bytes):   # each tensor gets pattern(cluster, cache, tensor)
        cache = llmdd.Cache()
        desc = llmdd.CacheDesc(num_tensors, [batch, block_bytes], llmdd.DT_UINT8)
        status = engine.AllocateCache(desc, cache)
        assert status == llmdd.LLM_SUCCESS, status
        caches[cache.cache_id] = cache
        for t in range(num_tensors):
            fill_pattern(cache_tensor(cache, t), cluster_id, cache.cache_id, t)
        return {"cache_id": cache.cache_id}

    def link(cluster_id, ip, port):
        remote = llmdd.IpInfo(ip, port)
        status = engine.LinkLlmClusters([llmdd.ClusterInfo(cluster_id, 1, [], [remote])], [], 3000)
        return {"status": int(status)}

    def pull_cache(remote, remote_cache_id, cache_id):
        status = engine.PullKvCache(llmdd.CacheIndex(remote, remote_cache_id, 0), caches[cache_id])
        return {"status": int(status)}

    def push_cache(remote, remote_cache_id, cache_id, remote_batch_index):
        status = engine.PushKvCache(caches[cache_id], llmdd.CacheIndex(remote, remote_cache_id, remote_batch_index))
        return {"status": int(status)}

    def finalize():
        engine.Finalize()
        return {}

    commands = {
        "allocate": allocate, "link": link, "pull_cache": pull_cache, "push_cache": push_cache, "finalize": finalize,
        "deallocate": lambda cache_id: {"status": int(engine.DeallocateCache(cache_id))},
        "tensor": lambda cache_id, index: {"hex": cache_tensor(caches[cache_id], index).tobytes().hex()},
    }
    return {"engine": engine, "caches": caches}, commands, port, engine.Finalize


def _dropin_side(cluster_id, listen_ip, option):
    """llmdd.llm_datadist's names for snippets, which make their own `datadist`: (namespace, commands, port, close)."""
    namespace = {"numpy": numpy, "memory": memory, "pattern": pattern}
    exec("from llmdd.llm_datadist import *", namespace)

    def close():
        if "datadist" in namespace:
            namespace["datadist"].finalize()

    return namespace, {}, None, close


SIDES = {"agent": _agent_side, "engine": _engine_side, "dropin": _dropin_side}


def _serve(side, cluster_id, listen_ip, option):
    """The peer's main loop: one JSON command a line on stdin, one JSON answer a line on stdout."""
    namespace, commands, port, close = SIDES[side](cluster_id, listen_ip, option)
    print(json.dumps({"port": port}), flush=True)
    for line in sys.stdin:
        message = json.loads(line)
        try:
            if "code" in message:
                exec(message["code"], namespace)
                answer = {"result": namespace.pop("result", None)}
            else:
                op = message.pop("op")
                answer = commands[op](**message)
        except Exception as error:   # reported to the test, which decides
            status = getattr(error, "status_code", None)
            answer = {"error": type(error).__name__, "status": None if status is None else int(status),
                      "message": str(error)}
        print(json.dumps(answer), flush=True)
    close()


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
