import os

import pytest

import llmdd
from support import peer

# Hypothesis runs every property test this many times by default; CI can raise it.
from hypothesis import settings

settings.register_profile("default", max_examples=200, deadline=None)
settings.register_profile("ci", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("LLMDD_HYPOTHESIS_PROFILE", "default"))


def pytest_collection_modifyitems(config, items):
    if llmdd.SIMULATED:
        return
    skip = pytest.mark.skip(reason="needs llmdd's host runtime; this build uses runtime=acl")
    for item in items:
        if "sim_only" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session):
    peer.reap()   # the peers closed in the background end before the run does


def pytest_terminal_summary(terminalreporter):
    passed = len(terminalreporter.stats.get("passed", []))
    terminalreporter.write_line(f"llmdd runtime={llmdd.BACKEND}: {passed} tests passed against this build")


@pytest.fixture
def engine():
    """An engine initialized on device 0, finalized afterwards."""
    with llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt) as dd:
        assert dd.Initialize({"llm.DeviceId": "0"}) == llmdd.LLM_SUCCESS
        yield dd


@pytest.fixture
def device_memory(monkeypatch):
    """Sets the simulated device capacity for engines initialized afterwards.

    The runtime reads it at aclInit, which llmdd calls when no engine is initialized."""

    def set_capacity(text):
        monkeypatch.setenv("LLMDD_SIM_DEVICE_MEMORY", text)

    return set_capacity
