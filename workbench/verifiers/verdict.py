"""One verdict type for every consumer of a verifier.

Rollout scoring, the GRPO reward and the reasoning eval all ask the same question ("is this completion
right, and how right?"), so they share :class:`Verdict` and :class:`Verifier`: a reward curve and an eval
number computed from the same rollouts can then never disagree about what counted as correct.

Verifiers register themselves by name (``@register_verifier("math")``) so recipes can name them as strings.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from workbench.errors import WorkbenchError
from workbench.time_limit import LimitedCalls

__all__ = ["Verdict", "Verifier", "VERIFIERS", "register_verifier", "get_verifier", "UnknownVerifierError",
           "TimeLimitedVerifier", "DEFAULT_TIME_LIMIT_S", "TIME_LIMIT_REASON"]

# The hard limit per verify call of a rule verifier (one that sets ``time_limit``). Generous: a rule verdict takes
# about a millisecond (tests/test_verifier_fuzz.py bounds it at tens of milliseconds); the limit only has to be short
# next to a training step and long next to any honest sample on a loaded machine.
DEFAULT_TIME_LIMIT_S = 10.0
TIME_LIMIT_REASON = "time limit"


@dataclass
class Verdict:
    """The outcome of checking one completion against one reference.

    ``score`` is in [0, 1] (partial credit where the task has it); ``passed`` is the binary decision the
    eval reports. ``details`` always carries ``extracted`` (the answer read from the completion, as a
    string, or None when nothing could be read) and ``reason`` (a short human string: why it passed or
    failed), so a surprising reward can be traced back without re-running the verifier.
    """

    score: float
    passed: bool
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.score = float(self.score)
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"Verdict.score must be in [0, 1], got {self.score}")
        self.details.setdefault("extracted", None)
        self.details.setdefault("reason", "")

    @property
    def extracted(self) -> str | None:
        return self.details["extracted"]

    @property
    def reason(self) -> str:
        return self.details["reason"]


class Verifier(ABC):
    """Base class: subclasses set ``name`` and implement :meth:`verify`.

    ``verify_batch`` loops by default; a verifier that can amortise work across a batch (a model judge,
    say) overrides it. Verifiers must be safe to call from worker threads.
    """

    name: str = ""
    # The dataclass of this verifier's recipe options (``verifier.options`` in a recipe, or get_verifier keywords);
    # None for a verifier that takes none. Checked strictly at recipe time by :meth:`check_options`.
    options: ClassVar[type | None] = None
    # Seconds one verify call may take when built by get_verifier, which then runs it in a child process
    # (TimeLimitedVerifier). Rule verifiers that read model text set it; a judge (a model in this process) does not.
    time_limit: ClassVar[float | None] = None

    @classmethod
    def check_options(cls, options: dict, source: str = "verifier.options"):
        """Build the options dataclass strictly (unknown keys and bad types fail, with a did-you-mean)."""
        from workbench.config import RecipeError, build

        if cls.options is None:
            if options:
                raise RecipeError(f"{source}: verifier {cls.name!r} takes no options, got {sorted(options)}")
            return None
        return build(cls.options, dict(options), source=source)

    @abstractmethod
    def verify(self, prompt: str, completion: str, reference: str) -> Verdict:
        """Judge ``completion`` (the model's answer to ``prompt``) against ``reference``."""

    def verify_batch(
        self, prompts: Sequence[str], completions: Sequence[str], references: Sequence[str]
    ) -> list[Verdict]:
        if not len(prompts) == len(completions) == len(references):
            raise ValueError(
                f"verify_batch needs equally long lists, got {len(prompts)} prompts, "
                f"{len(completions)} completions, {len(references)} references"
            )
        return [self.verify(p, c, r) for p, c, r in zip(prompts, completions, references)]


class UnknownVerifierError(WorkbenchError, ValueError):
    """A recipe names a verifier that is not registered."""


VERIFIERS: dict[str, type[Verifier]] = {}


def register_verifier(name: str):
    """Class decorator: ``@register_verifier("math")`` makes ``get_verifier("math")`` build the class."""

    def deco(cls: type[Verifier]) -> type[Verifier]:
        if name in VERIFIERS and VERIFIERS[name] is not cls:
            raise ValueError(f"verifier {name!r} is already registered to {VERIFIERS[name].__name__}")
        cls.name = name
        VERIFIERS[name] = cls
        return cls

    return deco


class TimeLimitedVerifier(Verifier):
    """The verdicts of ``VERIFIERS[name](**options)``, each computed in a child process and failed after ``seconds``.

    A sample that runs out of time gets ``Verdict(0.0, False)`` with ``reason = "time limit"`` and ``time_limit_s``;
    one whose child dies (a crash inside a library) gets ``reason = "verifier process died"``. Either way the job
    goes on with the next sample, in a fresh child. Errors the verifier raises (a bad reference's DataError) are
    raised here unchanged. See :mod:`workbench.time_limit` for why a process.
    """

    def __init__(self, inner: Verifier, options: dict[str, Any], seconds: float):
        cls = type(inner)
        name = self.name = cls.name
        self.inner = inner  # the same verifier in this process: its attributes, never its verify
        self.seconds = float(seconds)
        self._calls = LimitedCalls(__name__, "_build_in_child", {"module": cls.__module__, "name": name,
                                                                  "options": dict(options)}, seconds)

    def __repr__(self) -> str:
        return f"TimeLimitedVerifier({self.name!r}, {self.seconds:g} s)"

    def verify(self, prompt: str, completion: str, reference: str) -> Verdict:
        verdict, problem = self._calls.call(prompt, completion, reference)
        if problem is None:
            return verdict
        reason = TIME_LIMIT_REASON if problem == "timeout" else "verifier process died"
        return Verdict(0.0, False, {"extracted": None, "rule": None, "reason": reason, "time_limit_s": self.seconds})


def _build_in_child(module: str, name: str, options: dict[str, Any]):
    """In the child of a TimeLimitedVerifier: import the verifier's module (it registers itself), return its verify."""
    import importlib

    importlib.import_module(module)
    return VERIFIERS[name](**options).verify


_DEFAULT = object()


def get_verifier(name: str, *, time_limit: float | None | object = _DEFAULT, **options: Any) -> Verifier:
    """Build the verifier registered as ``name``; ``options`` go to its constructor.

    ``time_limit`` (seconds; default: the class's ``time_limit``) runs each verify call in a child process and fails
    the sample when it takes longer (:class:`TimeLimitedVerifier`); ``None`` runs it in this process, unlimited.
    """
    try:
        cls = VERIFIERS[name]
    except KeyError:
        close = difflib.get_close_matches(name, VERIFIERS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownVerifierError(
            f"unknown verifier {name!r}{hint}; known verifiers: {', '.join(sorted(VERIFIERS))}"
        ) from None
    seconds = cls.time_limit if time_limit is _DEFAULT else time_limit
    verifier = cls(**options)  # built here too, so bad options fail in the caller's process, with its message
    if seconds is None:
        return verifier
    return TimeLimitedVerifier(verifier, options, seconds)
