"""Ports and Mooncake: what every transfer test asks of the machine first; and the control
requests a test's links send."""
import os
import socket


def free_port(ip="127.0.0.1"):
    """A port nobody listens on now (what binds it next may race another process: rare)."""
    with socket.socket() as probe:
        probe.bind((ip, 0))
        return probe.getsockname()[1]


def listening(port, ip="127.0.0.1"):
    """Whether something accepts connections on ip:port now."""
    with socket.socket() as probe:
        return probe.connect_ex((ip, port)) == 0


def socket_inodes(pid):
    """The inodes of the sockets process `pid` holds (Linux: /proc)."""
    inodes = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue   # closed since it was listed
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:["):-1]))
    return inodes


def sockets_on_port(port):
    """The inodes of this process's TCP sockets bound or connected to `port` (Linux: /proc)."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            probe = socket.socket(fileno=int(name))
        except OSError:
            continue   # not a socket, or closed since it was listed
        try:
            if probe.family == socket.AF_INET and probe.type == socket.SOCK_STREAM:
                ends = [probe.getsockname()]
                try:
                    ends.append(probe.getpeername())
                except OSError:
                    pass   # a listener
                if any(end[1] == port for end in ends):
                    found.add(os.fstat(probe.fileno()).st_ino)
        finally:
            probe.detach()
    return found


def mooncake_missing():
    """Why Mooncake cannot be used here (the tests that need it skip with this), or None."""
    try:
        import mooncake.engine  # noqa: F401
    except ImportError as error:
        return f"Mooncake's Transfer Engine is not usable here (pip install 'llmdd[transfer]', libibverbs1): {error}"
    return None


def record_requests(monkeypatch):
    """The control requests (message types) this process's links send from now on, in order."""
    from llmdd.transfer import _channel
    sent = []
    request = _channel.Channel.request

    def recorded(channel, message_type, body, timeout_s):
        sent.append(message_type)
        return request(channel, message_type, body, timeout_s)
    monkeypatch.setattr(_channel.Channel, "request", recorded)
    return sent
