"""Rule verifiers: turn (prompt, completion, reference) into a :class:`Verdict`.

* ``math`` -- GSM8K-style numeric answers (:mod:`workbench.verifiers.math`);
* ``reasoning_gym`` -- any reasoning-gym task, scored by the task's own scorer
  (:mod:`workbench.verifiers.reasoning_gym`; reasoning_gym itself is imported only when used).

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

__all__ = ["Verdict", "Verifier", "VERIFIERS", "register_verifier", "get_verifier", "UnknownVerifierError"]
