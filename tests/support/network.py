"""Ports and Mooncake: what every transfer test asks of the machine first."""
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


def mooncake_missing():
    """Why Mooncake cannot be used here (the tests that need it skip with this), or None."""
    try:
        import mooncake.engine  # noqa: F401
    except ImportError as error:
        return f"Mooncake's Transfer Engine is not usable here (pip install 'llmdd[transfer]', libibverbs1): {error}"
    return None
