"""The paired cluster bootstrap (workbench_eval.stats), against answers derived by hand or by enumeration.

Each test names the bug it catches: an unpaired bootstrap, resampling (prompt, seed) rows instead of prompts,
pooling seeds wrongly, or comparing different prompt sets.
"""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from workbench_eval.stats import by_seed, normal_halfwidth, paired_bootstrap, pool, seed_spread


def test_a_constant_per_prompt_difference_has_a_zero_width_interval():
    # a = b + 0.25 on every prompt, while b itself swings between 0 and 1: every resample's mean difference is
    # exactly 0.25. An unpaired bootstrap (resampling a and b independently) would give a wide interval.
    b = {f"p{i}": [float(i % 2)] for i in range(200)}
    a = {p: [v[0] + 0.25] for p, v in b.items()}
    out = paired_bootstrap(a, b, resamples=2000)
    assert out["delta"] == pytest.approx(0.25)
    assert out["ci_low"] == pytest.approx(0.25) and out["ci_high"] == pytest.approx(0.25)
    assert out["se"] == pytest.approx(0.0, abs=1e-12)
    assert out["excludes_zero"]


def test_the_interval_matches_the_enumerated_bootstrap_distribution():
    # Three prompts with differences 0, 0, 1: the 27 equally likely resamples give means 0, 1/3, 2/3, 1 with
    # probabilities 8, 12, 6, 1 (/27). The 2.5% quantile is 0; 2/3 covers only 26/27 = 96.3% < 97.5%, so the 97.5%
    # quantile is 1. The bootstrap s.e. is the population sd of d over sqrt(3): sqrt(2/9) / sqrt(3).
    means = [sum(c) / 3 for c in itertools.product([0.0, 0.0, 1.0], repeat=3)]
    assert sorted(set(means)) == [0, 1 / 3, 2 / 3, 1] and means.count(2 / 3) == 6
    a = {"x": [0.0], "y": [0.0], "z": [1.0]}
    b = {"x": [0.0], "y": [0.0], "z": [0.0]}
    out = paired_bootstrap(a, b, resamples=20_000, seed=3)
    assert out["delta"] == pytest.approx(1 / 3)
    assert out["ci_low"] == 0.0 and out["ci_high"] == 1.0
    assert out["se"] == pytest.approx(math.sqrt(2 / 9) / math.sqrt(3), rel=0.03)
    assert not out["excludes_zero"]


def test_the_half_width_agrees_with_the_normal_approximation_on_many_prompts():
    # 0/1 outcomes on 600 prompts, a flips 15% of b's failures to passes and 5% of its passes to failures. The
    # bootstrap half-width of a mean of 600 per-prompt differences is close to 1.96 sd / sqrt(P).
    rng = random.Random(0)
    b, a, diffs = {}, {}, []
    for i in range(600):
        vb = float(rng.random() < 0.3)
        r = rng.random()
        va = 1.0 if (vb == 0 and r < 0.15) else 0.0 if (vb == 1 and r < 0.05) else vb
        a[f"p{i}"], b[f"p{i}"] = [va], [vb]
        diffs.append(va - vb)
    out = paired_bootstrap(a, b, resamples=10_000)
    half = (out["ci_high"] - out["ci_low"]) / 2
    assert half == pytest.approx(normal_halfwidth(diffs), rel=0.08)
    assert out["delta"] == pytest.approx(np.mean(diffs))


def test_seeds_are_pooled_per_prompt_so_identical_seeds_add_no_evidence():
    # The same outcomes recorded as two identical seeds must give exactly the interval of one seed: the prompts are
    # the clusters. Resampling (prompt, seed) rows would count each prompt twice and shrink the interval by ~sqrt(2).
    rng = random.Random(1)
    one_a = {f"p{i}": [float(rng.random() < 0.45)] for i in range(300)}
    one_b = {f"p{i}": [float(rng.random() < 0.35)] for i in range(300)}
    two_a = {p: v * 2 for p, v in one_a.items()}
    two_b = {p: v * 2 for p, v in one_b.items()}
    single, double = paired_bootstrap(one_a, one_b, seed=5), paired_bootstrap(two_a, two_b, seed=5)
    assert (double["ci_low"], double["ci_high"], double["delta"]) == (single["ci_low"], single["ci_high"],
                                                                     single["delta"])
    assert double["seeds_a"] == 2 and single["seeds_a"] == 1


def test_pooling_averages_each_prompts_seeds_before_differencing():
    # Hand values: a has seeds (1, 0) on p and (1, 1) on q; b has one seed, 0 on p and 1 on q.
    # Pooled a = 0.5, 1.0; differences 0.5, 0.0; delta = 0.25.
    a = {"p": [1.0, 0.0], "q": [1.0, 1.0]}
    b = {"p": [0.0], "q": [1.0]}
    assert pool(a) == {"p": 0.5, "q": 1.0}
    assert paired_bootstrap(a, b, resamples=500)["delta"] == pytest.approx(0.25)


def test_different_prompt_sets_are_refused_not_intersected():
    with pytest.raises(ValueError, match="different prompts"):
        paired_bootstrap({"p": [1.0], "q": [0.0]}, {"p": [1.0], "r": [0.0]})
    with pytest.raises(ValueError, match="different prompts"):
        by_seed([{"p": 1.0, "q": 0.0}, {"p": 1.0}])


def test_by_seed_and_seed_spread_by_hand():
    assert by_seed([{"p": 1, "q": 0}, {"q": 1, "p": 0}]) == {"p": [1.0, 0.0], "q": [0.0, 1.0]}
    s = seed_spread([0.3, 0.5])
    assert s["mean"] == pytest.approx(0.4) and s["sd"] == pytest.approx(math.sqrt(0.02))
    assert (s["min"], s["max"], s["seeds"]) == (0.3, 0.5, 2)
    assert seed_spread([0.7])["sd"] is None


def test_the_interval_is_reproducible_from_its_seed():
    a = {f"p{i}": [float(i % 3 == 0)] for i in range(50)}
    b = {f"p{i}": [float(i % 5 == 0)] for i in range(50)}
    assert paired_bootstrap(a, b, seed=11) == paired_bootstrap(a, b, seed=11)


def test_pairing_is_by_prompt_id_not_by_dict_order():
    # The same constant difference as above, but b's prompts are inserted in the reverse order. Pairing by position
    # (zip of the two dicts' values) would pair p0 with p199 and give a wide interval around 0.25.
    b_items = [(f"p{i}", [float(i % 2)]) for i in range(200)]
    a = {p: [v[0] + 0.25] for p, v in b_items}
    b = dict(reversed(b_items))
    out = paired_bootstrap(a, b, resamples=500)
    assert out["delta"] == pytest.approx(0.25)
    assert out["ci_low"] == pytest.approx(0.25) and out["ci_high"] == pytest.approx(0.25)


def test_the_level_sets_the_percentiles():
    # The enumerated distribution above (means 0, 1/3, 2/3, 1 with probabilities 8, 12, 6, 1 / 27; cumulative
    # 0.296, 0.741, 0.963, 1): at level 0.8 the 10% quantile is 0 and the 90% quantile is 2/3 (0.741 < 0.9 < 0.963).
    a = {"x": [0.0], "y": [0.0], "z": [1.0]}
    b = {"x": [0.0], "y": [0.0], "z": [0.0]}
    out = paired_bootstrap(a, b, resamples=20_000, seed=3, level=0.8)
    assert out["ci_low"] == 0.0 and out["ci_high"] == pytest.approx(2 / 3)
    assert out["level"] == 0.8


def test_mean_interval_by_enumeration_and_by_hand():
    from workbench_eval.stats import mean_interval

    # One system's values 0, 0, 1: the same 27 resamples as above, so mean 1/3 and the 95% interval [0, 1].
    out = mean_interval({"x": 0.0, "y": 1.0, "z": 0.0}, resamples=20_000, seed=3)
    assert out["mean"] == pytest.approx(1 / 3) and (out["ci_low"], out["ci_high"]) == (0.0, 1.0)
    assert out["prompts"] == 3
    # A constant has a zero-width interval at its value (not at 0: the interval is of the mean, not of a difference).
    c = mean_interval({f"p{i}": 0.7 for i in range(30)}, resamples=500)
    assert (c["mean"], c["ci_low"], c["ci_high"]) == (pytest.approx(0.7),) * 3
    # 0/1 values, 30 of 100: the half-width is close to 1.96 * sqrt(0.3 * 0.7 / 100) = 0.0898.
    w = mean_interval({f"p{i}": float(i < 30) for i in range(100)})
    assert (w["ci_high"] - w["ci_low"]) / 2 == pytest.approx(1.96 * math.sqrt(0.21 / 100), rel=0.1)


def test_report_bars_carry_the_bootstrap_interval_of_each_run(tmp_path, monkeypatch):
    """`workbench report` metric bars: a run with per-query values gets its 95% interval over queries; a metric with
    an s.e. gets 1.96 s.e.; a metric with neither gets no bar."""
    from workbench_eval import compare

    per = {f"q{i}": {"accuracy": float(i < 30)} for i in range(100)}  # 0.3 over 100 queries: about +-0.09
    err = compare._error_bar({"per_query": per, "metrics": {"kl_to_ref_se": 0.05}}, "accuracy")
    assert 0.06 < err[0] < 0.12 and 0.06 < err[1] < 0.12
    assert compare._error_bar({"per_query": per, "metrics": {"kl_to_ref_se": 0.05}}, "kl_to_ref") == \
        (pytest.approx(0.098), pytest.approx(0.098))
    assert compare._error_bar({"per_query": per, "metrics": {}}, "mean_length") == (0.0, 0.0)
