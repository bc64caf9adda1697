"""The outside world (kernels, storage, database, Redis, LLM) behind small interfaces."""
