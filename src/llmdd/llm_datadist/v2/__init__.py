"""CANN's v2 package: the cache-manager API (llm_types, cache_manager, llm_datadist)."""
