"""A peer process for tests/test_cann_usage.py: one side of CANN's two-process samples, driven
through llmdd.llm_datadist one Python snippet at a time.

`python tests/cann_peer.py` prints {"ready": true}, then runs each JSON line's "code" in one
namespace (llmdd.llm_datadist's names, numpy, and the memory helpers below) and answers
{"result": <the snippet's `result`>} or {"error": <exception type>, "status": <status_code>,
"message": ...}. At the end of its input it finalizes the snippets' `datadist`, if any.
"""
import ctypes
import json
import selectors
import socket
import subprocess
import sys

import numpy

WAIT_SECONDS = 30


def memory(addr, nbytes):
    """The nbytes at addr as a writable uint8 array (on the sim build a 'device' address is host memory)."""
    return numpy.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(addr))


def pattern(seed, nbytes):
    """Bytes that differ per seed and along the buffer."""
    return ((numpy.arange(nbytes, dtype=numpy.uint32) * 13 + seed * 101 + 7) % 251).astype(numpy.uint8)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PeerProcess:
    """The peer process, seen from the test: run() a snippet, failure() of one that must raise."""

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        assert self._answer() == {"ready": True}

    def _answer(self):
        with selectors.DefaultSelector() as selector:   # a bounded wait for the peer's next line
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(WAIT_SECONDS):
                self.process.kill()
                raise AssertionError(f"the peer said nothing in {WAIT_SECONDS} s")
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(WAIT_SECONDS)
            raise AssertionError(f"the peer ended: {self.process.stderr.read()[-4000:]}")
        return json.loads(line)

    def _send(self, code):
        self.process.stdin.write(json.dumps({"code": code}) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def run(self, code):
        """The snippet's `result`; AssertionError if it raised."""
        answer = self._send(code)
        if "error" in answer:
            raise AssertionError(f"the peer raised {answer['error']} ({answer['status']}): {answer['message']}")
        return answer["result"]

    def failure(self, code):
        """(exception type name, status code or None) of a snippet that must raise."""
        answer = self._send(code)
        assert "error" in answer, f"the peer's snippet did not raise: {code}"
        return answer["error"], answer["status"]

    def close(self):
        """Ends the peer (it finalizes) and checks it exited cleanly."""
        try:
            _, stderr = self.process.communicate(timeout=WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise AssertionError("the peer did not end") from None
        assert self.process.returncode == 0, stderr[-4000:]


def _serve():
    scope = {"numpy": numpy, "memory": memory, "pattern": pattern}
    exec("from llmdd.llm_datadist import *", scope)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        try:
            exec(json.loads(line)["code"], scope)
            answer = {"result": scope.pop("result", None)}
        except Exception as error:   # reported to the test, which decides
            status = getattr(error, "status_code", None)
            answer = {"error": type(error).__name__, "status": None if status is None else int(status),
                      "message": str(error)}
        print(json.dumps(answer), flush=True)
    if "datadist" in scope:
        scope["datadist"].finalize()


if __name__ == "__main__":
    _serve()
