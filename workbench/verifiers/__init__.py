"""Rule verifiers: turn (prompt, completion, reference) into a :class:`Verdict`.

* ``math`` -- GSM8K-style numeric answers (:mod:`workbench.verifiers.math`);
* ``reasoning_gym`` -- any reasoning-gym task, scored by the task's own scorer
  (:mod:`workbench.verifiers.reasoning_gym`; reasoning_gym itself is imported only when used);
* ``judge`` -- an LLM as judge through a generation backend: rubric scores, pairwise preferences, TREC
  relevance grades, reasoning-answer consistency, with strict parsing and fenced inputs
  (:mod:`workbench.verifiers.judge`);
* ``rollout_aware`` -- VerIPO's rollout-aware verifier: accuracy, judged consistency, n-gram repetition
  and length combined (:mod:`workbench.verifiers.rollout_aware`).

``get_verifier("math")`` builds one by name, as recipes do. Every module of this package except the ``verify``
stage (:mod:`.job`) and the registry itself (:mod:`.verdict`) is a verifier and is imported here, so adding a
verifier is one new file with an ``@register_verifier`` class.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from workbench.verifiers.verdict import (
    VERIFIERS,
    UnknownVerifierError,
    Verdict,
    Verifier,
    get_verifier,
    register_verifier,
)

_NOT_VERIFIERS = {"job", "verdict"}
for _m in _pkgutil.iter_modules(__path__):
    if _m.name not in _NOT_VERIFIERS:
        _importlib.import_module(f"{__name__}.{_m.name}")  # each registers its verifier

__all__ = ["Verdict", "Verifier", "VERIFIERS", "register_verifier", "get_verifier", "UnknownVerifierError"]
