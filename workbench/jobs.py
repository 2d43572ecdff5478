"""Imports every stage module that registers a job config, so `load_recipe` and `workbench check` know them all.

The stage modules keep heavy imports (torch, vllm, trl) inside functions, so this import is cheap.
"""

import workbench.generation.jobs  # noqa: F401
