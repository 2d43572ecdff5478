"""Imports every stage module that registers a job config, so `load_recipe` and `workbench check` know them all.

The stage modules keep heavy imports (torch, vllm, trl) inside functions, so this import is cheap.
"""

from workbench.data import pairs  # noqa: F401
from workbench.generation import documents, rollouts  # noqa: F401
from workbench.verifiers import job as verify_job  # noqa: F401
from workbench.training import preference  # noqa: F401
import eval.reasoning  # noqa: F401,E402
import eval.retrieval  # noqa: F401,E402
from workbench import loop  # noqa: F401,E402
from workbench.training import embedding  # noqa: F401,E402
from workbench.data import lists  # noqa: F401,E402
