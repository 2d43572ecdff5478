"""Dual consistency filtering and curriculum hard-negative sampling (CoRNStack), on hand-built embeddings.

Embeddings are 2-D unit vectors at given angles, so every cosine is cos(angle difference) and each expected
outcome below is worked out by hand in the comments.
"""

import math

import numpy as np
import pytest
from scipy.stats import chisquare

from workbench.data.consistency import dual_consistency, dual_consistency_mask, dual_consistency_texts
from workbench.data.negatives import false_negative_mask, mine_st, sample_negatives, tau_schedule, top_pool


def unit(deg):
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


U64 = 2.0 ** -53  # float64's unit roundoff (1.1e-16); tolerances below are counted in it


# Queries qA 0deg, qB 55deg, qC 125deg, qD 30deg; documents dA 10, dB 55, dC 60, dX 200 (a distractor).
# Pairs: qA->dA, qB->dB, qC->dC, qD->dC (two queries share dC).
Q = np.array([unit(a) for a in (0, 55, 125, 30)])
D = np.array([unit(a) for a in (10, 55, 60, 200)])
POS = [0, 1, 2, 2]
# Similarities of the pairs: cos10 = .98481, cos0 = 1, cos65 = .42262, cos30 = .86603.
# (a) docs beating the positive:  qA none; qB none; qC: dB cos70=.342 < .423, dA cos115 < 0, dX cos75=.259 -> 0;
#     qD: dA cos20=.940 and dB cos25=.906 beat dC .866 -> 2.
# (b) queries beating the pair's query on its positive: dA: qB cos45=.707, qC, qD cos20=.940 all < .985 -> 0;
#     dB: nobody beats 1 -> 0; dC for qC (.423): qA cos60=.5 and qB cos5=.996 beat it, qD owns dC too and does not
#     count -> 2; dC for qD (.866): qB .996 beats it, qC is excluded -> 1.
DOC_RANK, QUERY_RANK = [0, 0, 0, 2], [0, 0, 2, 1]


def test_dual_consistency_ranks_by_hand():
    res = dual_consistency(Q, D, POS, k=2, threshold=0.0)
    assert res.doc_rank.tolist() == DOC_RANK
    assert res.query_rank.tolist() == QUERY_RANK
    # float64: the angles in radians (2 roundings of <= 3.5, so <= 8 u in the cosine, twice), cos/sin (1 ulp each),
    # the re-normalisation (~5 u) and a 2-term dot product (2 u): ~30 u. 64 u = 7e-15; similarities taken in float32
    # (1e-7 off) or a cosine of the wrong pair (> 0.01 off) fail it.
    np.testing.assert_allclose(res.similarity, [math.cos(math.radians(a)) for a in (10, 0, 65, 30)], atol=64 * U64)


@pytest.mark.parametrize("k, threshold, bidirectional, expected", [
    (2, 0.0, True, [True, True, False, False]),  # qC fails (b) with 2 queries above; qD fails (a) with 2 docs above
    (3, 0.0, True, [True, True, True, True]),  # every rank < 3
    (3, 0.5, True, [True, True, False, True]),  # qC's cos65 = .423 < .5
    (1, 0.0, False, [True, True, True, False]),  # one-directional (the paper's rule): only qD's doc rank 2 fails
    (2, 0.9, False, [True, True, False, False]),  # .423 and .866 below .9
])
def test_dual_consistency_mask(k, threshold, bidirectional, expected):
    assert dual_consistency_mask(Q, D, POS, k, threshold, bidirectional=bidirectional).tolist() == expected


def test_scale_invariance_and_counts():
    res = dual_consistency(Q * np.array([[3.0], [0.5], [7.0], [1.0]]), D * 2.0, POS, k=2, threshold=0.0)
    assert res.keep.tolist() == [True, True, False, False]  # cosine: norms do not matter
    assert res.counts() == {"pairs": 4, "kept": 2, "failed_doc_rank": 1, "failed_query_rank": 1,
                            "failed_threshold": 0}


def test_groups_exclude_own_positives():
    # One query at 0deg with positives d1 at 5deg and d2 at 10deg, and d3 at 7deg (not a positive).
    q = np.array([unit(0), unit(0)])
    d = np.array([unit(5), unit(10), unit(7)])
    # As two separate queries, pair 2 (cos10) is beaten by d1 (cos5) and d3 (cos7): rank 2.
    assert dual_consistency(q, d, [0, 1], k=2, threshold=0).doc_rank.tolist() == [0, 2]
    # As one query (same group), d1 is its own positive and does not compete: rank 1.
    res = dual_consistency(q, d, [0, 1], k=2, threshold=0, groups=["a", "a"])
    assert res.doc_rank.tolist() == [0, 1] and res.keep.tolist() == [True, True]


def test_duplicate_of_positive_does_not_evict_it():
    # d1 is an exact copy of d0: ties count for the pair (strict >), so d0 still ranks first with k=1.
    assert dual_consistency_mask(np.array([unit(0)]), np.array([unit(20), unit(20)]), [0], k=1, threshold=0).all()


def test_bad_shapes():
    with pytest.raises(ValueError, match="pos_index out of range"):
        dual_consistency(Q, D, [0, 1, 2, 4])
    with pytest.raises(ValueError, match="expected q_emb"):
        dual_consistency(Q, D[:, :1], POS)


def test_text_wrapper_on_tiny_bert(tiny_bert):
    from workbench.data.consistency import embed, load_encoder

    texts = ["vitamin d and bone density", "statins lower cholesterol", "exercise and depression",
             "index funds have low fees"]
    # Precondition: the texts are apart (a random encoder puts them all near each other): no other text reaches the
    # threshold, so a query matched to another text would fail both checks below.
    e = embed(load_encoder(tiny_bert), texts).astype(np.float64)
    off = (e @ e.T)[~np.eye(len(texts), dtype=bool)]
    assert off.max() < 0.999 - 1e-4, f"precondition: distinct texts must score below the threshold, got {off.max()}"
    # each query's positive is its own text: cosine 1, so it tops both directions
    res = dual_consistency_texts(texts, texts, [0, 1, 2, 3], tiny_bert, k=1, threshold=0.999)
    assert res.keep.all()
    # The float32 embeddings are re-normalised in float64, and for unit vectors cos(a, b) = 1 - |a - b|^2 / 2: even
    # if the two encode calls batched differently (float32 forward passes then differ by ~1e-6), the cosine is
    # 1 - 5e-13, plus (h + 4) u = 4e-15 for h = 32. 1e-9 keeps a margin; similarities taken in float32 (1e-7 off)
    # or a query matched to another text (cosine < .9989, checked above) fail it.
    np.testing.assert_allclose(res.similarity, 1.0, atol=1e-9)
    assert not dual_consistency_texts(texts, texts, [0, 1, 2, 3], tiny_bert, k=1, threshold=1.01).keep.any()


# ----------------------------------------------------------------------------------------------- negatives


def test_tau_schedules_by_hand():
    # float64, <= 6 roundings (and pow/cos within an ulp) on quantities <= start = .05, with cancellation when a
    # schedule lands on end = .001 (.05 - .049): absolute, 8 u * .05 = 4e-17. t = step / total instead of
    # step / (total - 1), or the cosine's (1 - cos) / 2, are off by > 1e-3.
    tol = 8 * U64 * 0.05
    # t = step / (total - 1) = 2 / 4 = 0.5
    assert tau_schedule("linear", 0.05, 0.001, 2, 5) == pytest.approx(0.0255, abs=tol)  # .05 + (.001 - .05) * .5
    assert tau_schedule("geometric", 0.05, 0.001, 2, 5) == pytest.approx(math.sqrt(5e-5), abs=tol)  # .05 * .02 ** .5
    assert tau_schedule("cosine", 0.05, 0.001, 2, 5) == pytest.approx(0.0255, abs=tol)  # (1 + cos(pi/2)) / 2 = .5
    # t = 1 / 4: cosine = .001 + .049 * (1 + cos(pi/4)) / 2, cos(pi/4) = sqrt(1/2): .001 + .049 * .853553 = .0428241
    by_hand = 0.001 + 0.049 * (1 + math.sqrt(0.5)) / 2
    assert tau_schedule("cosine", 0.05, 0.001, 1, 5) == pytest.approx(by_hand, abs=tol)
    assert tau_schedule("constant", 0.05, 0.001, 3, 5) == 0.05
    for kind in ("linear", "cosine", "geometric"):
        assert tau_schedule(kind, 0.05, 0.001, 0, 5) == pytest.approx(0.05, abs=tol)
        assert tau_schedule(kind, 0.05, 0.001, 4, 5) == pytest.approx(0.001, abs=tol)
        assert tau_schedule(kind, 0.05, 0.001, 99, 5) == pytest.approx(0.001, abs=tol)  # clipped past the end
    assert tau_schedule("linear", 0.05, 0.001, 0, 1) == 0.05  # a single step sits at the start
    with pytest.raises(ValueError, match="geometric"):
        tau_schedule("geometric", 0.0, 0.001, 0, 3)


def test_false_negatives_dropped_exactly():
    # s_pos = .9, ratio .95: cut-off .855 -> .90 and .86 are dropped, .85 (just under) is kept
    scores = np.array([0.90, 0.86, 0.85, 0.50, -0.20])
    assert false_negative_mask(scores, 0.9, 0.95).tolist() == [True, True, False, False, False]
    rng = np.random.default_rng(0)
    got = sample_negatives(scores, 0.9, k=10, tau=0.05, false_neg_ratio=0.95, rng=rng)
    assert sorted(got.tolist()) == [2, 3, 4]  # everything that survives, nothing that does not
    # negative positive score: cut-off = -.2 - (1 - .5) * .2 = -.3, below the positive
    assert false_negative_mask([-0.25, -0.35], -0.2, 0.5).tolist() == [True, False]
    # exclude removes labelled positives whatever their score
    got = sample_negatives(scores, 0.9, k=10, tau=0.05, false_neg_ratio=0.95, rng=rng, exclude=[3])
    assert sorted(got.tolist()) == [2, 4]


def test_first_draw_matches_softmax():
    # p_j = exp(s_j / tau) / sum: s/tau = 3, 2, 1, 0 -> e^3, e^2, e, 1 over 31.19 = .6439, .2369, .0871, .0321
    scores, tau, n = np.array([0.3, 0.2, 0.1, 0.0]), 0.1, 20000
    p = np.exp(scores / tau) / np.exp(scores / tau).sum()
    # the hand values are rounded to 4 decimals (<= 5e-5 off); float64 adds ~1e-16
    np.testing.assert_allclose(p, [0.6439, 0.2369, 0.0871, 0.0321], atol=5e-5 + 1e-12)
    rng = np.random.default_rng(123)
    first = [sample_negatives(scores, 1.0, 1, tau, 1.0, rng)[0] for _ in range(n)]
    counts = np.bincount(first, minlength=4)
    assert chisquare(counts, n * p).pvalue > 0.001


def test_second_draw_is_without_replacement():
    # Successive sampling: P(first i, then j) = p_i * p_j / (1 - p_i), i != j (12 cells, sum 1)
    scores, tau, n = np.array([0.3, 0.2, 0.1]), 0.2, 20000
    p = np.exp(scores / tau) / np.exp(scores / tau).sum()
    cells = [(i, j) for i in range(3) for j in range(3) if i != j]
    expected = np.array([p[i] * p[j] / (1 - p[i]) for i, j in cells])
    # 12 cells of 3 roundings each (1 - p_i, the product, the division) and a 12-term sum: <= 48 u
    assert expected.sum() == pytest.approx(1.0, abs=48 * U64)
    rng = np.random.default_rng(7)
    draws = [tuple(sample_negatives(scores, 1.0, 2, tau, 1.0, rng)) for _ in range(n)]
    assert all(a != b for a, b in draws)
    counts = np.array([sum(1 for d in draws if d == c) for c in cells])
    assert chisquare(counts, n * expected).pvalue > 0.001


def test_cold_temperature_picks_the_top_and_is_seeded():
    scores = np.array([0.1, 0.7, 0.3, 0.65, 0.2])
    for tau in (0.0, 1e-6):
        got = sample_negatives(scores, 1.0, 3, tau, 1.0, np.random.default_rng(0))
        assert got.tolist() == [1, 3, 2]
    a = sample_negatives(scores, 1.0, 3, 1.0, 1.0, np.random.default_rng(42))
    b = sample_negatives(scores, 1.0, 3, 1.0, 1.0, np.random.default_rng(42))
    assert a.tolist() == b.tolist()
    # a hot temperature reaches beyond the top: over 200 draws, some first pick is not index 1
    rng = np.random.default_rng(1)
    assert {int(sample_negatives(scores, 1.0, 1, 1.0, 1.0, rng)[0]) for _ in range(200)} != {1}


def test_top_pool():
    scores = np.array([0.1, 0.7, 0.3, 0.65, 0.2])
    assert top_pool(scores, 2).tolist() == [1, 3]
    assert top_pool(scores, 2, exclude=[1]).tolist() == [3, 2]
    assert top_pool(scores, None).tolist() == [1, 3, 2, 4, 0]


ST_SUBJECTS = ["bone health", "calcium intake", "statins", "aerobic exercise", "central banks", "credit scores",
               "index fund fees", "smoking", "coffee", "sleep"]
ST_ASPECTS = ["trial", "and memory", "and heart attacks", "in older adults"]
ST_GAP = 1e-4  # between any two of the corpus's scores, and from each to the cut: 100x the float32 noise (~1e-6)


def test_st_baseline_agrees_with_cold_sampler(tiny_bert):
    """sentence-transformers' top-k miner and our sampler at tau = 0 apply the same relative cut: same negatives.

    The comparison means something only if the false-negative cut bites (documents above it, so the plain top 3
    would differ) and leaves at least 3 below it, and if no score lies so near the cut or another kept score that the
    two pipelines' float32 scores (~1e-6 apart) could re-cut or reorder them. A random encoder's cosines fall where
    they fall (tiny-bert's here all lie within a few hundredths of 1), so the data are built for that: the corpus is
    the 10 highest-scoring of 40 candidate texts that score below the positive and lie >= ST_GAP apart, and the
    ratio puts the cut halfway between the 3rd and 4th: 3 above it, 7 below. Both are checked before comparing.
    (An earlier version fixed ratio .97 on one build's cosines; on another build's vocabulary both sides returned a
    single negative.)
    """
    from sentence_transformers import SentenceTransformer

    from workbench.data.consistency import embed

    model = SentenceTransformer(tiny_bert)
    query, positive = "does vitamin d help bones", "vitamin d supports bone mineral density"
    candidates = [f"{s} {a}" for s in ST_SUBJECTS for a in ST_ASPECTS]
    q, pos = embed(model, [query]), embed(model, [positive])
    s_pos = float(pos[0] @ q[0])
    s_cand = (embed(model, candidates) @ q[0]).astype(np.float64)
    picked = []
    for i in np.argsort(-s_cand, kind="stable"):
        if s_cand[i] <= s_pos - ST_GAP and (not picked or s_cand[picked[-1]] - s_cand[i] >= ST_GAP):
            picked.append(int(i))
    picked = picked[:10]
    assert len(picked) == 10, (f"precondition: need 10 candidates below the positive ({s_pos:.6f}) and {ST_GAP} "
                               f"apart, found {len(picked)}; cosines {np.sort(s_cand)[::-1].round(6).tolist()}")
    corpus = [candidates[i] for i in picked[::-1]]  # lowest first: the order must not matter
    top = s_cand[picked]
    ratio = (top[2] + top[3]) / 2 / s_pos

    q, pos, c = embed(model, [query]), embed(model, [positive]), embed(model, corpus)
    scores = (c @ q[0]).astype(np.float64)
    cut = ratio * float(pos[0] @ q[0])
    ranked = np.sort(scores)[::-1]
    assert (scores > cut).sum() == 3 and (scores <= cut).sum() == 7, f"precondition: 3 above the cut {cut}: {ranked}"
    assert np.abs(scores - cut).min() >= ST_GAP / 2 and np.diff(ranked).max() <= -ST_GAP, (
        f"precondition: scores {ST_GAP} apart and {ST_GAP / 2} from the cut {cut}: {ranked}")

    got = mine_st([query], [[positive]], corpus, model, num_negatives=3, false_neg_ratio=ratio, sampling="top")[0]
    ours = sample_negatives(scores, float(pos[0] @ q[0]), 3, 0.0, ratio, np.random.default_rng(0))
    assert len(got) == 3 and got == [corpus[i] for i in ours]
    assert got == [corpus[i] for i in np.argsort(-scores)[3:6]]  # the 4th to 6th highest: the top 3 are cut
    assert positive not in got
