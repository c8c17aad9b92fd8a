"""The process's Mooncake engines: an agent takes its engines here and hands them back here.

By default they run in a data-plane helper process (_dataplane.DataPlane): Mooncake's ports then
bind only the listen address, and a message that crashes Mooncake kills the helper, not the
engine's process. With llmdd.MooncakeInProcess they are MooncakeEngines in this process
(_mooncake), for those who accept that risk (docs/transfer.md).

Starting engines costs tens of milliseconds (a helper: a few hundred, for Python's start) and
stopping in-process ones about 1 s holding the GIL (Mooncake joins its threads). An agent that
closes hands its engines back here, with nothing registered (no peer reads or writes a byte
through them), and the next agent on the same host, protocol, RDMA settings (Mooncake reads them
from its process's environment, once) and placement takes them: a process that finalizes and
initializes again (a serving engine restarting a worker, a test suite) pays the start once and
the stop once, at exit, instead of at every Finalize.
"""
import atexit
import os
import threading

from ._dataplane import HELPER_KIND, DataPlane
from ._mooncake import IN_PROCESS, MooncakeEngines

MAX_IDLE_PER_KIND = 2
_idle_lock = threading.Lock()
_idle = {}             # engines.kind -> [engines] no agent uses
_kept_in_child = []    # a forked child's copy of the parent's idle engines: never stopped here
_exiting = False       # at exit, engines handed back are stopped, not kept


def engines_for(host, protocol, device_name, in_process=False, environment=()):
    """Engines on `host` that run with the Mooncake variables `environment` ((name, value) pairs,
    _mooncake.rdma_environment): idle ones an earlier agent handed back, or new ones (LLMException
    when they cannot start)."""
    kind = (host, protocol, device_name, environment, IN_PROCESS if in_process else HELPER_KIND)
    dead = []
    with _idle_lock:
        idle = _idle.get(kind, [])
        while idle and not idle[-1].alive:   # a helper killed while it waited
            dead.append(idle.pop())
        engines = idle.pop() if idle else None
    for engines_gone in dead:
        engines_gone.close()
    if engines is not None:
        return engines
    if in_process:
        return MooncakeEngines(host, protocol, device_name, environment)
    return DataPlane(host, protocol, device_name, environment)


def hand_back(engines):
    """An agent is done with `engines`: nothing stays registered, and they wait idle for the next
    agent (up to MAX_IDLE_PER_KIND of a kind; more are stopped)."""
    engines.close_regions()
    with _idle_lock:
        idle = _idle.setdefault(engines.kind, [])
        # Engines that failed a transfer may keep failing (_mooncake.TCP_QUEUE_VARIABLE) or still
        # hold batches Mooncake gave up on: a new agent gets fresh ones, as a new process would.
        if not _exiting and engines.alive and not engines.failed and len(idle) < MAX_IDLE_PER_KIND:
            idle.append(engines)
            return
    engines.close()


def _stop_idle_engines():
    global _exiting
    with _idle_lock:
        _exiting = True   # an agent closed by a later exit hook stops its engines itself
        idle = [engines for kind in _idle.values() for engines in kind]
        _idle.clear()
    for engines in idle:
        engines.close()


def _forget_idle_engines_in_child():
    """The idle engines' threads, sockets and helpers are the parent's: the child never stops
    them. The lock is made anew: a thread of the parent may have held it at the fork."""
    global _idle_lock
    _idle_lock = threading.Lock()
    _kept_in_child.extend(engines for kind in _idle.values() for engines in kind)
    _idle.clear()


atexit.register(_stop_idle_engines)   # before the interpreter tears down what their threads need
os.register_at_fork(after_in_child=_forget_idle_engines_in_child)
