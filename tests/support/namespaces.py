"""Hosts of their own: network namespaces, each with an address on one /24, made and removed by the
test (needs root and iproute2's `ip`; CI runs as root). Every `ip` call is bounded, and every link
is made inside the namespaces, so removing them removes all of it."""
import contextlib
import os
import shutil
import subprocess

import pytest


def ip(*arguments):
    return subprocess.run(["ip", *arguments], capture_output=True, text=True, timeout=10)


@contextlib.contextmanager
def network_namespaces(count):
    """Yields [(namespace, address)] for `count` namespaces: two are joined by a veth pair, more by
    a veth each to a bridge in one more namespace. Skips the test where namespaces cannot be made;
    removes every namespace it made (and with them their links), failing or not."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("network namespaces need root and iproute2's `ip`")
    tag = f"llmdd{os.getpid() % 100000}"
    hosts = [f"{tag}h{index}" for index in range(count)]
    made = ip("netns", "add", hosts[0])
    if made.returncode != 0:
        pytest.skip(f"network namespaces are not allowed here: {made.stderr.strip()}")
    namespaces = [hosts[0]]
    try:
        # A /24 from the test's pid, so two runs at once do not collide on addresses either.
        subnet = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
        for host in hosts[1:]:
            _run(("netns", "add", host))
            namespaces.append(host)
        ends = [f"{tag}v{index}" for index in range(count)]
        if count == 2:
            _run(("-n", hosts[0], "link", "add", ends[0], "type", "veth", "peer", "name", ends[1], "netns", hosts[1]))
        else:
            switch = f"{tag}sw"
            _run(("netns", "add", switch))
            namespaces.append(switch)
            _run(("-n", switch, "link", "add", "bridge", "type", "bridge"))
            _run(("-n", switch, "link", "set", "bridge", "up"))
            for index, end in enumerate(ends):
                port = f"{tag}s{index}"
                _run(("-n", switch, "link", "add", port, "type", "veth", "peer", "name", end, "netns", hosts[index]))
                _run(("-n", switch, "link", "set", port, "master", "bridge"))
                _run(("-n", switch, "link", "set", port, "up"))
        for index, (host, end) in enumerate(zip(hosts, ends)):
            _run(("-n", host, "addr", "add", f"{subnet}.{index + 1}/24", "dev", end))
            _run(("-n", host, "link", "set", end, "up"))
            _run(("-n", host, "link", "set", "lo", "up"))
        yield [(host, f"{subnet}.{index + 1}") for index, host in enumerate(hosts)]
    finally:
        for namespace in namespaces:
            ip("netns", "del", namespace)


def _run(step):
    result = ip(*step)
    assert result.returncode == 0, f"ip {' '.join(step)}: {result.stderr}"
