"""Task environments: datasets, prompt rendering and reward functions for one task family each.

* :mod:`jaxrl_llm.envs.text2sql`: Text-to-SQL (Spider/BIRD loaders, a synthetic task, read-only
  sandboxed SQLite execution and execution-match rewards).
"""
