"""Paired comparisons with uncertainty: a cluster bootstrap over prompts (or queries), seeds pooled per prompt.

Two policies evaluated on the *same* prompts differ prompt by prompt much less than their accuracies vary across
prompts (an easy prompt is easy for both), so the comparison is made on per-prompt differences: the pairing. Several
training seeds of one method are not independent draws of the prompts either: they share them. So each prompt's
outcomes are first averaged over that method's seeds (the pooling), and the bootstrap resamples *prompts*, the
cluster, never (prompt, seed) rows; resampling rows would count each prompt once per seed and shrink the interval by
about sqrt(seeds) without any new evidence.

    delta = (1/P) sum_p [ mean_s a(p, s) - mean_s b(p, s) ]

``paired_bootstrap`` returns delta with its percentile 95% interval (Efron and Tibshirani 1993, ch. 13) from
``resamples`` draws of P prompts with replacement, and the bootstrap standard error. The draws are seeded, so a
report renders the same interval every time.

``seed_spread`` reports what the bootstrap does not: how much the method's score moves between training seeds
(each seed's mean over all prompts: the mean, the sample standard deviation and the range).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

Outcomes = Mapping[str, Sequence[float]]  # prompt id -> one value per seed (a run), e.g. 0/1 correct


def pool(outcomes: Outcomes) -> dict[str, float]:
    """Each prompt's mean over its seeds."""
    pooled = {}
    for pid, values in outcomes.items():
        if not len(values):
            raise ValueError(f"prompt {pid!r} has no outcomes")
        pooled[pid] = float(np.mean(values))
    return pooled


def paired_bootstrap(a: Outcomes, b: Outcomes, resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """mean(a) - mean(b) over the prompts both were evaluated on, with a cluster-bootstrap interval (see above).

    Both sides must cover the same prompts: a comparison on different prompt sets is not paired, so a mismatch is an
    error rather than a silent intersection."""
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b))[:3], sorted(set(b) - set(a))[:3]
        raise ValueError(f"paired comparison on different prompts: only in a {only_a}, only in b {only_b}")
    ids = sorted(a)
    if not ids:
        raise ValueError("no prompts to compare")
    pa, pb = pool(a), pool(b)
    d = np.array([pa[p] - pb[p] for p in ids])  # (P,) per-prompt differences of the pooled outcomes
    rng = np.random.default_rng(seed)
    # (resamples, P) prompt indices drawn with replacement; in chunks so memory stays small for large P.
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // len(d))
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, len(d), size=(stop - start, len(d)))
        means[start:stop] = d[idx].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return {"delta": float(d.mean()), "ci_low": float(lo), "ci_high": float(hi), "level": level,
            "se": float(means.std(ddof=1)), "prompts": len(ids),
            "seeds_a": _seeds(a), "seeds_b": _seeds(b), "resamples": resamples,
            "excludes_zero": bool(lo > 0 or hi < 0)}


def _seeds(o: Outcomes) -> int:
    sizes = {len(v) for v in o.values()}
    return sizes.pop() if len(sizes) == 1 else -1  # -1: prompts with different seed counts (should not happen)


def seed_spread(per_seed_means: Sequence[float]) -> dict:
    """The method's score per training seed: mean, sample standard deviation (None for one seed), min and max."""
    v = [float(x) for x in per_seed_means]
    if not v:
        raise ValueError("no seeds")
    sd = float(np.std(v, ddof=1)) if len(v) > 1 else None
    return {"seeds": len(v), "mean": float(np.mean(v)), "sd": sd, "min": min(v), "max": max(v), "values": v}


def by_seed(runs: Sequence[Mapping[str, float]]) -> dict[str, list[float]]:
    """[{prompt: value} per seed] -> {prompt: [value per seed]}; every run must cover the same prompts."""
    if not runs:
        raise ValueError("no runs")
    keys = set(runs[0])
    for r in runs[1:]:
        if set(r) != keys:
            raise ValueError("runs of one method cover different prompts; they cannot be pooled per prompt")
    return {p: [float(r[p]) for r in runs] for p in sorted(keys)}


def normal_halfwidth(values: Sequence[float], level: float = 0.95) -> float:
    """The normal-approximation half-width z * sd / sqrt(n) of a mean (for cross-checks, not for reports)."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + level / 2)
    v = np.asarray(values, dtype=float)
    return float(z * v.std(ddof=1) / math.sqrt(len(v)))


def mean_interval(values: Mapping[str, float], resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """One system's mean over prompts with its percentile bootstrap interval (the prompts resampled): the error bar
    of a single bar in a plot. Differences between systems use :func:`paired_bootstrap`, which is much tighter."""
    zero = {p: [0.0] for p in values}
    out = paired_bootstrap({p: [float(v)] for p, v in values.items()}, zero, resamples, seed, level)
    return {"mean": out["delta"], "ci_low": out["ci_low"], "ci_high": out["ci_high"], "se": out["se"],
            "prompts": out["prompts"]}


def error_bar(values: Mapping[str, float]) -> tuple[float, float]:
    """A bar's (down, up) error lengths: the 95% bootstrap interval of its mean over prompts; (0, 0) for no values."""
    if not values:
        return 0.0, 0.0
    ci = mean_interval(values)
    return ci["mean"] - ci["ci_low"], ci["ci_high"] - ci["mean"]
