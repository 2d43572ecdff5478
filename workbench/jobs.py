"""Every stage's recipe schema, registered: the one place that imports them all, and the recipe loader that needs them.

The base (:mod:`workbench.config`) cannot import the stages (they import it), so the orchestrators load recipes
through :func:`load_recipe` here. The stage modules keep heavy imports (torch, vllm, trl) inside functions, so this
import is cheap.
"""

from __future__ import annotations

from pathlib import Path

import workbench_eval.reasoning  # noqa: F401  (eval_reasoning)
import workbench_eval.retrieval  # noqa: F401  (eval_retrieval)
from workbench import loop  # noqa: F401  (loop)
from workbench.config import parse_recipe
from workbench.data import lists, pairs  # noqa: F401
from workbench.generation import documents, rollouts  # noqa: F401
from workbench.training import embedding, preference  # noqa: F401
from workbench.verifiers import job as verify_job  # noqa: F401


def load_recipe(path: str | Path, overrides: list[str] | None = None, job: str | None = None):
    """Load a recipe onto its job's config class, strictly (see :mod:`workbench.config`)."""
    return parse_recipe(path, overrides, job)
