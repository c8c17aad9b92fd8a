"""The control sockets of this process (listeners, links, handshakes), so that a forked child
closes its copies of them.

A child that kept a copy of the listening socket would keep the port bound after the parent
closed it: the parent's next Initialize on the same llm.ListenIpInfo could not listen, and links
to the port would wait on a child that never accepts.
"""
import os
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
