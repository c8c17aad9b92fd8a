"""The drop-in's set-up, shared by its tests' fixtures and the tests that make their own LLMDataDists."""
from llmdd.llm_datadist import LLMConfig, LLMDataDist, LLMRole

POOL = '{"memory_size": 16777216}'


def initialized(**settings):
    """An LLMDataDist initialized with an LLMConfig of these settings (device 0)."""
    config = LLMConfig()
    config.device_id = 0
    for name, value in settings.items():
        setattr(config, name, value)
    datadist = LLMDataDist(LLMRole.PROMPT, 0)
    datadist.init(config.generate_options())
    return datadist
