"""Registers the generation jobs' configs (`job: rollouts`, `job: documents`)."""

from workbench.generation import documents, rollouts  # noqa: F401
