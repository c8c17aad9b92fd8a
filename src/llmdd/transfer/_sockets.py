"""The control sockets of this process (listeners, links, handshakes), so that a forked child
closes its copies of them; and the same for listeners a library opened, found by their ports.

A child that kept a copy of the listening socket would keep the port bound after the parent
closed it: the parent's next Initialize on the same llm.ListenIpInfo could not listen, and links
to the port would wait on a child that never accepts.
"""
import os
import socket
import weakref

_open = weakref.WeakSet()


def track(sock):
    """`sock`, closed in a forked child from now on."""
    _open.add(sock)
    return sock


def _close_copies_in_child():
    # close() only: it releases the child's descriptor, where a shutdown() would end the parent's
    # connection too. No other thread runs in the child, so none is using these objects.
    for sock in list(_open):
        sock.close()
    _open.clear()


os.register_at_fork(after_in_child=_close_copies_in_child)


def close_listeners_in_child(ports):
    """In a forked child: releases its copies of the TCP sockets listening on `ports` that a
    library opened for this process and whose descriptors it does not tell (Mooncake's handshake
    daemons). Each descriptor is pointed at /dev/null rather than closed, so that its number
    stays taken for the library's copy of the object that still names it. Linux only (elsewhere
    the copies stay until the child exits)."""
    if not ports:
        return
    try:
        descriptors = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return
    placeholder = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for descriptor in descriptors:
            if descriptor != placeholder and _listens_on(descriptor, ports):
                os.dup2(placeholder, descriptor, inheritable=False)
    finally:
        os.close(placeholder)


def _listens_on(descriptor, ports):
    try:
        probe = socket.socket(fileno=descriptor)
    except OSError:
        return False   # not a socket, or closed since it was listed
    try:
        return (probe.family in (socket.AF_INET, socket.AF_INET6) and probe.type == socket.SOCK_STREAM
                and probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) != 0
                and probe.getsockname()[1] in ports)
    except OSError:
        return False
    finally:
        probe.detach()   # the probe never closes what it looked at
