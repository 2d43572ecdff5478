"""Rule verifiers: turn (prompt, completion, reference) into a :class:`Verdict`.

* ``math`` -- GSM8K-style numeric answers (:mod:`workbench.verifiers.math`);
* ``reasoning_gym`` -- any reasoning-gym task, scored by the task's own scorer
  (:mod:`workbench.verifiers.reasoning_gym`; reasoning_gym itself is imported only when used);
* ``judge`` -- an LLM as judge through a generation backend: rubric scores, pairwise preferences, TREC
  relevance grades, reasoning-answer consistency, with strict parsing and fenced inputs
  (:mod:`workbench.verifiers.judge`);
* ``rollout_aware`` -- VerIPO's rollout-aware verifier: accuracy, judged consistency, n-gram repetition
  and length combined (:mod:`workbench.verifiers.rollout_aware`).

``get_verifier("math")`` builds one by name, as recipes do.
"""

from workbench.verifiers.verdict import (
    VERIFIERS,
    UnknownVerifierError,
    Verdict,
    Verifier,
    get_verifier,
    register_verifier,
)

# Imported for their @register_verifier side effect.
from workbench.verifiers import math as _math  # noqa: E402,F401
from workbench.verifiers import reasoning_gym as _reasoning_gym  # noqa: E402,F401
from workbench.verifiers import judge as _judge  # noqa: E402,F401
from workbench.verifiers import rollout_aware as _rollout_aware  # noqa: E402,F401

__all__ = ["Verdict", "Verifier", "VERIFIERS", "register_verifier", "get_verifier", "UnknownVerifierError"]
