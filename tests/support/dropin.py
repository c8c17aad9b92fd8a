"""The drop-in's set-up, shared by its tests' fixtures and the tests that make their own LLMDataDists."""
import pytest

from llmdd.llm_datadist import LLMConfig, LLMDataDist, LLMException, LLMRole

POOL = '{"memory_size": 16777216}'


def options(**settings):
    """The options of an LLMConfig of these settings (device 0)."""
    config = LLMConfig()
    config.device_id = 0
    for name, value in settings.items():
        setattr(config, name, value)
    return config.generate_options()


def failure(call, *args, **kwargs):
    """The status code of the LLMException call(*args, **kwargs) raises."""
    with pytest.raises(LLMException) as raised:
        call(*args, **kwargs)
    return raised.value.status_code


def initialized(**settings):
    """An LLMDataDist initialized with an LLMConfig of these settings (device 0)."""
    datadist = LLMDataDist(LLMRole.PROMPT, 0)
    datadist.init(options(**settings))
    return datadist
