"""The drop-in's set-up, shared by its tests' fixtures and the tests that make their own LLMDataDists."""
import threading

import pytest

from llmdd.llm_datadist import LLMClusterInfo, LLMConfig, LLMDataDist, LLMException, LLMRole

POOL = '{"memory_size": 16777216}'
LOCALHOST = "127.0.0.1"


def options(**settings):
    """The options of an LLMConfig of these settings (device 0)."""
    config = LLMConfig()
    config.device_id = 0
    for name, value in settings.items():
        setattr(config, name, value)
    return config.generate_options()


def cluster_info(remote_cluster_id, remote_port=None, local_port=None):
    """An LLMClusterInfo of a cluster on this host: its remote and local ip infos when given."""
    cluster = LLMClusterInfo()
    cluster.remote_cluster_id = remote_cluster_id
    if local_port is not None:
        cluster.append_local_ip_info(LOCALHOST, local_port)
    if remote_port is not None:
        cluster.append_remote_ip_info(LOCALHOST, remote_port)
    return cluster


def failure(call, *args, **kwargs):
    """The status code of the LLMException call(*args, **kwargs) raises."""
    with pytest.raises(LLMException) as raised:
        call(*args, **kwargs)
    return raised.value.status_code


def locked_probe(ask, found_locked):
    """A callback that runs ask() on another thread, bounded, and appends to found_locked whether
    ask() was still waiting after 5 s: whether the engine was locked while the callback ran.
    An LLMException of ask() is an answer."""
    def answer():
        try:
            ask()
        except LLMException:
            pass

    def probe():
        asking = threading.Thread(target=answer, daemon=True)
        asking.start()
        asking.join(5)
        found_locked.append(asking.is_alive())
    return probe


def hostile(base, callback):
    """A subclass of `base` (int, str) whose hashing and comparing run callback() first."""
    class Hostile(base):
        def __hash__(self):
            callback()
            return base.__hash__(self)

        def __eq__(self, other):
            callback()
            return base.__eq__(self, other)
    return Hostile


def initialized(**settings):
    """An LLMDataDist initialized with an LLMConfig of these settings (device 0)."""
    datadist = LLMDataDist(LLMRole.PROMPT, 0)
    datadist.init(options(**settings))
    return datadist
