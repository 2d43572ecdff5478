"""Label calibration: kappa, Spearman and the confusion matrix against values computed by hand."""

import math

import pytest

from workbench.data.calibration import (calibration_report, filter_disagreeing, judge_grades, plot_confusion,
                                        relevance_grade_fn, render_calibration_markdown)

INTENDED = [0, 1, 2, 3, 3, 2, 1, 0]
JUDGED = [0, 2, 2, 3, 2, None, 1, 1]
# The None (an unparseable judge output) is left out: 7 pairs
#   (0,0) (1,2) (2,2) (3,3) (3,2) (1,1) (0,1)
# Confusion, rows intended 0..3, columns judged 0..3; row sums r = [2,2,1,2], column sums c = [1,2,3,1], n = 7:
#   [1 1 0 0] [0 1 1 0] [0 0 1 0] [0 0 1 1]
# Weighted kappa = 1 - sum w_ij O_ij / sum w_ij r_i c_j / n.
#   Quadratic w = (i-j)^2: observed 1+1+1 = 3 (three off-by-one cells);
#     sum w r c = 2*(0+1*2+4*3+9*1) + 2*(1*1+0+1*3+4*1) + 1*(4*1+1*2+0+1*1) + 2*(9*1+4*2+1*3+0)
#               = 2*23 + 2*8 + 7 + 2*20 = 109, so kappa = 1 - 3*7/109 = 88/109 = 0.807339
#   Linear w = |i-j|: observed 3; sum w r c = 2*11 + 2*6 + 5 + 2*10 = 59, kappa = 1 - 21/59 = 38/59 = 0.644068
#   Unweighted: p_o = 4/7, p_e = (2*1 + 2*2 + 1*3 + 2*1)/49 = 11/49, kappa = (28-11)/(49-11) = 17/38 = 0.447368
# Spearman = Pearson of average ranks (mean rank 4):
#   intended (0,1,2,3,3,1,0) -> ranks (1.5,3.5,5,6.5,6.5,3.5,1.5), centred (-2.5,-.5,1,2.5,2.5,-.5,-2.5)
#   judged   (0,2,2,3,2,1,1) -> ranks (1,5,5,7,5,2.5,2.5),        centred (-3,1,1,3,1,-1.5,-1.5)
#   sum of products 22.5, sums of squares 26.5 and 25.5: rho = 22.5 / sqrt(26.5 * 25.5) = 0.865545
KAPPA_Q, KAPPA_L, KAPPA_U = 88 / 109, 38 / 59, 17 / 38
RHO = 22.5 / math.sqrt(26.5 * 25.5)

# Tolerances, float64 (u = 2^-53 = 1.1e-16): every statistic here is a handful of sums over 7 pairs or 16 cells of
# small integers (exact) followed by a few divisions, products and a square root -- no cancellation worse than the
# kappas' 1 - x with x >= 0.19: a few tens of roundings, < 1e-14 absolute. 1e-12 leaves 100x; the bugs that matter
# (a None read as grade 0, ordinal instead of average ranks for ties, n - 1 vs n, linear vs quadratic weights) move
# these values by > 1e-2.
TOL = 1e-12
U64 = 2.0 ** -53


def test_report_by_hand():
    r = calibration_report(INTENDED, JUDGED)
    assert r["confusion"] == [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 1, 1]]
    assert (r["n"], r["n_judged"], r["n_unparseable"]) == (8, 7, 1)
    # rates and means: an exact integer count over n, one correctly rounded division (at most 2 roundings if taken as a
    # mean of 0/1 values): 2 u relative
    assert r["unparseable_rate"] == pytest.approx(1 / 8, rel=2 * U64)
    assert r["kappa_quadratic"] == pytest.approx(KAPPA_Q, abs=TOL)
    assert r["kappa_linear"] == pytest.approx(KAPPA_L, abs=TOL)
    assert r["kappa_unweighted"] == pytest.approx(KAPPA_U, abs=TOL)
    assert r["spearman"] == pytest.approx(RHO, abs=TOL)
    assert r["exact_agreement"] == pytest.approx(4 / 7, rel=2 * U64)
    assert r["within_one_agreement"] == 1.0
    assert r["mean_gap"] == pytest.approx(1 / 7, rel=2 * U64)  # judged - intended: (0,1,0,0,-1,0,1)
    assert r["per_grade"]["2"] == {"n": 1, "unparseable": 1, "agreement": 1.0, "mean_judged": 2.0}
    assert r["per_grade"]["3"] == {"n": 2, "unparseable": 0, "agreement": 0.5, "mean_judged": 2.5}


def test_unparseable_is_not_grade_zero():
    # Reading None as 0 would add a (2, 0) disagreement and change every statistic; it must not.
    as_zero = calibration_report(INTENDED, [0 if g is None else g for g in JUDGED])
    # the same TOL as above: anything beyond rounding is a different value (here it differs by ~0.2)
    assert as_zero["kappa_quadratic"] != pytest.approx(KAPPA_Q, abs=TOL)
    assert calibration_report(INTENDED, JUDGED)["confusion"][2][0] == 0


def test_degenerate_inputs():
    r = calibration_report([3, 2], [None, None])
    assert r["n_unparseable"] == 2 and r["kappa_quadratic"] is None and r["notes"]
    r = calibration_report([3, 3], [3, 3])
    assert r["exact_agreement"] == 1.0 and r["kappa_quadratic"] is None and r["spearman"] is None
    with pytest.raises(ValueError, match=r"judged\[1\]"):
        calibration_report([0, 1], [0, 4])
    with pytest.raises(ValueError, match="same length"):
        calibration_report([0, 1], [0])


def test_markdown_and_png(tmp_path):
    r = calibration_report(INTENDED, JUDGED)
    md = render_calibration_markdown(r)
    assert "0.807" in md and "0.644" in md and "0.866" in md
    assert "**1 unparseable**" in md
    assert "| **2** | 0 | 0 | 1 | 0 | 1 |" in md  # intended 2: one judged 2, one unparseable
    png = plot_confusion(r, tmp_path / "calibration.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_judge_grades_batches_and_aligns():
    rows = [{"query": "q1", "docs": ["a", "b", "c"]}, {"query": "q2", "docs": ["d"]},
            {"query": "q3", "docs": ["e", "f"]}]
    seen = []

    def grade_fn(pairs):
        seen.append(len(pairs))
        return [None if d == "c" else ord(d) % 4 for _, d in pairs]

    got = judge_grades(rows, grade_fn, batch_size=4)
    assert seen == [4, 2]
    assert got == [[ord("a") % 4, ord("b") % 4, None], [ord("d") % 4], [ord("e") % 4, ord("f") % 4]]
    with pytest.raises(ValueError, match="returned 1 grades for 4"):
        judge_grades(rows, lambda pairs: [0], batch_size=4)
    with pytest.raises(ValueError, match="0..3 or None"):
        judge_grades(rows, lambda pairs: ["3"] * len(pairs), batch_size=4)


def test_filter_disagreeing():
    rows = [{"query_id": "a", "docs": ["x", "y", "z"], "grades": [3, 2, 0], "provenance": ["s", "s", "r"]},
            {"query_id": "b", "docs": ["u"], "grades": [3], "provenance": ["s"]}]
    judged = [[1, None, 0], [0]]
    kept, counts = filter_disagreeing(rows, judged, max_gap=1)
    # a: x gap 2 dropped, y unparseable kept, z gap 0 kept; b: u gap 3 dropped, row empty
    assert kept == [{"query_id": "a", "docs": ["y", "z"], "grades": [2, 0], "provenance": ["s", "r"]}]
    assert counts == {"documents": 4, "dropped_disagreeing": 2, "dropped_unparseable": 0, "kept_unparseable": 1,
                      "rows_dropped_empty": 1}
    kept, counts = filter_disagreeing(rows, judged, max_gap=2, drop_unparseable=True)
    assert kept[0]["docs"] == ["x", "z"] and counts["dropped_unparseable"] == 1 and counts["rows_dropped_empty"] == 1


def test_llm_judge_adapter():
    """relevance_grade_fn over the LLM judge: a parsed SCORE line is the grade; anything else is None."""
    from workbench.generation.backends import FakeBackend
    from workbench.verifiers.judge import JudgeVerifier

    backend = FakeBackend(["Partly answers it.\nSCORE: 2", "SCORE: 5", "I think it is relevant", "**SCORE:** 0"])
    grade = relevance_grade_fn(JudgeVerifier(backend=backend))
    rows = [{"query": "does vitamin d help bones", "docs": ["vitamin d aids calcium uptake", "a", "b", "c"]}]
    assert judge_grades(rows, grade, batch_size=4) == [[2, None, None, 0]]  # 5 is off the 0-3 scale
    assert len(backend.calls) == 1  # one batched backend call
    assert "vitamin d aids calcium uptake" in str(backend.calls[0][0][0])
