"""Hard-negative mining: CoRNStack's curriculum softmax sampler, and sentence-transformers' miner as the baseline.

CoRNStack (Suresh et al. 2025, arXiv 2412.01007, "Curriculum-Based Hard Negative Mining"), for each (query, positive)
with similarities ``s_j`` between the query and every candidate ``j`` from a precomputed similarity matrix:

1. **False negatives out.** Candidates that score too close to the positive are likely unlabelled positives. The
   paper removes them "based on a similarity score threshold"; the rule here is relative to the positive's score::

       drop j  iff  s_j > s_pos - (1 - r) * |s_pos|          (= r * s_pos when s_pos >= 0)

   i.e. NV-Retriever's TopK-PercPos (Moreira et al. 2024, r = 0.95), the same cut as sentence-transformers'
   ``relative_margin = 1 - r``. The ``|s_pos|`` form keeps the cut-off below the positive when ``s_pos < 0``. With
   several positives, ``s_pos`` is the lowest of their scores (the safe side: the lowest cut-off drops the most).

2. **Softmax sampling.** ``k`` negatives are drawn *without replacement* from the survivors with::

       p_j = exp(s_j / tau) / sum_l exp(s_l / tau)                               (successive sampling)

   drawing one, removing it, renormalising, and repeating (the Plackett-Luce order). It is computed exactly by the
   Gumbel-top-k trick (Kool, van Hoof & Welling 2019, "Stochastic Beams and Where to Find Them", Sec. 3): the
   indices of the ``k`` largest ``s_j / tau + G_j`` with ``G_j ~ Gumbel(0, 1)`` iid. It never exponentiates, so it
   does not overflow at small ``tau`` (``exp(0.9 / 0.001)`` does in float64). ``tau = 0`` is the limit: plain top-k.

3. **Curriculum.** ``tau`` falls over training (the project page: "a temperature parameter that adjusts over time to
   gradually sharpen the selection"): early negatives are spread over many moderately hard candidates, late ones
   concentrate on the hardest. A third-party summary of the paper reports tau from 0.05 to 0.001 (the defaults
   here; not checked against the PDF). :func:`tau_schedule` gives the value at a step; a trainer can resample per
   epoch from the stored candidate scores, and the offline ``lists`` job uses the row's position in the data set as
   the step (meaningful only when the trainer does not shuffle; see :mod:`workbench.data.lists`).

The baseline, :func:`mine_st`, calls ``sentence_transformers.util.mine_hard_negatives`` (top-k or uniform sampling
after the same relative-margin cut) rather than re-implementing it.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

__all__ = ["TAU_SCHEDULES", "tau_schedule", "false_negative_mask", "sample_negatives", "top_pool", "mine_st"]

TAU_SCHEDULES = ("constant", "linear", "cosine", "geometric")


def tau_schedule(kind: Literal["constant", "linear", "cosine", "geometric"], start: float, end: float, step: int,
                 total: int) -> float:
    """Temperature at ``step`` of ``total`` (steps, epochs or rows), moving from ``start`` (step 0) to ``end``
    (step total-1). With progress ``t = step / (total - 1)`` (clipped to [0, 1]; 0 when total == 1):

    * constant:  start
    * linear:    start + (end - start) * t
    * cosine:    end + (start - end) * (1 + cos(pi * t)) / 2       (slow at both ends)
    * geometric: start * (end / start) ** t                         (equal ratios per step; start, end > 0)
    """
    if total < 1:
        raise ValueError(f"total must be >= 1, got {total}")
    if start < 0 or end < 0:
        raise ValueError(f"temperatures must be >= 0, got start={start}, end={end}")
    t = 0.0 if total == 1 else min(max(step / (total - 1), 0.0), 1.0)
    if kind == "constant":
        return float(start)
    if kind == "linear":
        return float(start + (end - start) * t)
    if kind == "cosine":
        return float(end + (start - end) * (1 + math.cos(math.pi * t)) / 2)
    if kind == "geometric":
        if start <= 0 or end <= 0:
            raise ValueError("the geometric schedule needs start > 0 and end > 0")
        return float(start * (end / start) ** t)
    raise ValueError(f"unknown tau schedule {kind!r}; one of {TAU_SCHEDULES}")


def false_negative_mask(scores, pos_score: float, ratio: float) -> np.ndarray:
    """(C,) bool, True for the likely false negatives: ``s_j > s_pos - (1 - ratio) * |s_pos|`` (module docstring).
    ``ratio = 1`` drops only candidates scoring above the positive; smaller ratios drop more."""
    if not 0 <= ratio <= 1:
        raise ValueError(f"false_neg_ratio must be in [0, 1], got {ratio}")
    scores = np.asarray(scores, dtype=np.float64)
    return scores > pos_score - (1.0 - ratio) * abs(pos_score)


def sample_negatives(scores, pos_score: float, k: int, tau: float, false_neg_ratio: float,
                     rng: np.random.Generator, exclude=None) -> np.ndarray:
    """Indices into ``scores`` (C,) of up to ``k`` negatives, in draw order: false negatives and ``exclude`` (indices
    that must never be negatives, e.g. the query's labelled positives) removed, then softmax sampling without
    replacement at temperature ``tau`` (module docstring). Fewer than ``k`` come back when fewer candidates survive.
    Deterministic for a given ``rng`` state."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D (C,), got shape {scores.shape}")
    if k < 0 or tau < 0:
        raise ValueError(f"k and tau must be >= 0, got k={k}, tau={tau}")
    allowed = ~false_negative_mask(scores, pos_score, false_neg_ratio) & np.isfinite(scores)
    if exclude is not None:
        allowed[np.asarray(exclude, dtype=np.int64)] = False
    cand = np.flatnonzero(allowed)  # (C',)
    take = min(k, cand.size)
    if take == 0:
        return np.zeros(0, dtype=np.int64)
    if tau == 0:
        keys = scores[cand]
    else:
        keys = scores[cand] / tau + rng.gumbel(size=cand.size)  # Gumbel-top-k: exact successive sampling
    order = np.argsort(-keys, kind="stable")[:take]
    return cand[order].astype(np.int64)


def top_pool(scores, size: int | None, exclude=None) -> np.ndarray:
    """Indices of the ``size`` highest scores (all when ``size`` is None), best first, ``exclude`` left out: the
    candidate pool to sample from. Outside the pool ``exp(s / tau)`` is negligible at the usual temperatures."""
    scores = np.asarray(scores, dtype=np.float64).copy()
    if exclude is not None:
        scores[np.asarray(exclude, dtype=np.int64)] = -np.inf
    n_ok = int(np.isfinite(scores).sum())
    size = n_ok if size is None else min(size, n_ok)
    if size <= 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-scores, size - 1)[:size] if size < scores.size else np.arange(scores.size)
    return part[np.argsort(-scores[part], kind="stable")][:size].astype(np.int64)


def mine_st(queries: list[str], positives: list[list[str]], corpus: list[str], encoder, num_negatives: int,
            false_neg_ratio: float, sampling: Literal["top", "random"] = "top", seed: int = 0,
            batch_size: int = 64) -> list[list[str]]:
    """Baseline: ``sentence_transformers.util.mine_hard_negatives`` with ``relative_margin = 1 - false_neg_ratio``
    (the same false-negative cut as above) and ``sampling_strategy`` top or random. Returns, per query, its
    negative texts (possibly fewer than ``num_negatives``). Every positive of a query is excluded by the library.
    Queries with identical text are one query to the library and get the same negatives."""
    import random

    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    if len(queries) != len(positives):
        raise ValueError("queries and positives must align")
    anchors, pos = [], []
    for q, ps in zip(queries, positives):
        if not ps:
            raise ValueError(f"query {q[:60]!r} has no positive: the relative margin needs one")
        anchors += [q] * len(ps)
        pos += list(ps)
    state = random.getstate()
    random.seed(seed)  # the library samples with the `random` module
    try:
        out = mine_hard_negatives(Dataset.from_dict({"anchor": anchors, "positive": pos}), encoder,
                                  anchor_column_name="anchor", positive_column_name="positive", corpus=list(corpus),
                                  relative_margin=1.0 - false_neg_ratio, num_negatives=num_negatives,
                                  sampling_strategy=sampling, output_format="labeled-pair", batch_size=batch_size,
                                  verbose=False)
    finally:
        random.setstate(state)
    negs: dict[str, list[str]] = {}
    for row in out:
        if row["label"] == 0:
            negs.setdefault(row["anchor"], []).append(row["positive"])
    return [negs.get(q, []) for q in queries]
