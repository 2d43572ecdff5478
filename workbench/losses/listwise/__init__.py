"""List-wise embedding losses on graded relevance: one file per loss, the file's name is the loss's name.

* ``ws2`` -- SyCL's 2-Wasserstein distance between Gaussians of predicted and target lists (:mod:`.ws2`);
* ``listnet`` -- ListNet's top-one cross-entropy (:mod:`.listnet`);
* ``lambdaloss`` -- LambdaLoss, NDCG-Loss2++ weighting, graded gains (:mod:`.lambdaloss`);
* ``graded_infonce`` -- InfoNCE over every positive grade, gain-weighted (:mod:`.graded_infonce`).

What they share (the score layout, masking, the sentence-transformers module shell) is :mod:`.base`. Each loss module
defines a pure function on ``(scores, grades, mask, temperature, **options)`` and ``LOSS``, its
:class:`~.base.ListwiseLoss` subclass. :data:`NAMES` is read from the file names, so the recipe schema knows every loss
without importing torch, and **adding a loss is one new file here** (plus its test).

The binary baseline ``infonce`` is sentence-transformers' own ``MultipleNegativesRankingLoss``, used as is (see
:mod:`workbench.training.embedding`).
"""

from __future__ import annotations

import importlib
import pkgutil

NAMES: tuple[str, ...] = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base"))


def get(name: str):
    """The loss module class registered as ``name`` (its module's ``LOSS``)."""
    if name not in NAMES:
        import difflib

        close = difflib.get_close_matches(name, NAMES, n=1)
        raise KeyError(f"no list-wise loss {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                       + f"; known: {', '.join(NAMES)}")
    return importlib.import_module(f"{__name__}.{name}").LOSS
