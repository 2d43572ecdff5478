"""The list-wise losses' maths, on tensors: hand-computed 2x3 values, independent references, invariances, gradients."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workbench.losses import (LISTWISE_LOSSES, gaussian_w2, graded_infonce_loss, lambda_loss, listnet_loss,
                              ws2_loss)
from workbench.losses.listwise_base import in_batch_layout

LOG = math.log
PURE = {name: fn for name, (_, fn) in LISTWISE_LOSSES.items()}

# The 2x3 example shared by ws2 and listnet: scores are log-probabilities and tau = 1, so softmax(scores) is exactly
#   P = [[1/2, 1/4, 1/4], [1/4, 1/2, 1/4]];
# grades are log-probabilities too (the pure functions take any real grades), so softmax(grades) is exactly
#   Y = [[3/4, 1/8, 1/8], [1/8, 3/4, 1/8]].
P = torch.tensor([[1 / 2, 1 / 4, 1 / 4], [1 / 4, 1 / 2, 1 / 4]], dtype=torch.float64)
Y = torch.tensor([[3 / 4, 1 / 8, 1 / 8], [1 / 8, 3 / 4, 1 / 8]], dtype=torch.float64)


def test_ws2_by_hand_2x3():
    # B = 2 rows are the samples, c = 1/(B-1) = 1. With two samples, x_1,2 = mu +- d where d = (x_1 - x_2)/2, so
    #   Sigma = c * (d d^T + d d^T) = 2 d d^T   and   Tr Sigma = 2 |d|^2.
    # Sigma_P Sigma_Y = 4 (d_P . d_Y) d_P d_Y^T has the one non-zero eigenvalue 4 (d_P . d_Y)^2, so
    #   Tr (Sigma_P Sigma_Y)^{1/2} = 2 |d_P . d_Y|   and   W = |mu_P - mu_Y|^2 + 2|d_P|^2 + 2|d_Y|^2 - 4|d_P . d_Y|.
    # mu_P = [3/8, 3/8, 1/4], mu_Y = [7/16, 7/16, 1/8]: |mu_P - mu_Y|^2 = 1/256 + 1/256 + 4/256 = 3/128
    # d_P = [1/8, -1/8, 0]: |d_P|^2 = 1/32;  d_Y = [5/16, -5/16, 0]: |d_Y|^2 = 25/128;  d_P . d_Y = 10/128 = 5/64
    # W = 3/128 + 8/128 + 50/128 - 40/128 = 21/128
    assert ws2_loss(P.log(), Y.log()).item() == pytest.approx(21 / 128, abs=1e-12)
    # the temperature divides the scores only: scores 0.1 * log P with tau = 0.1 give the same P
    assert ws2_loss(0.1 * P.log(), Y.log(), temperature=0.1).item() == pytest.approx(21 / 128, abs=1e-12)


def test_ws2_matches_explicit_covariances_and_sqrtm():
    """Independent reference: N x N covariances (numpy, 1/(B-1)) and scipy's general matrix square root."""
    import scipy.linalg

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 12, generator=g, dtype=torch.float64)
    grades = torch.randint(0, 4, (5, 12), generator=g).double()
    p = torch.softmax(scores / 0.5, dim=1).numpy()
    y = torch.softmax(grades, dim=1).numpy()
    cp, cy = np.cov(p.T), np.cov(y.T)
    ref = ((p.mean(0) - y.mean(0)) ** 2).sum() + np.trace(cp + cy - 2 * scipy.linalg.sqrtm(cp @ cy).real)
    assert ws2_loss(scores, grades, temperature=0.5).item() == pytest.approx(ref, rel=1e-7, abs=1e-9)


def test_ws2_is_zero_when_p_equals_y_and_symmetric():
    g = torch.Generator().manual_seed(1)
    grades = torch.randint(0, 4, (6, 18), generator=g).double()
    tau = 0.05
    # P = softmax(S / tau) equals Y = softmax(grades) exactly when S = tau * grades
    # (to rounding: a zero eigenvalue computed as ~1e-20 has a square root ~1e-10)
    assert ws2_loss(tau * grades, grades, temperature=tau).item() == pytest.approx(0.0, abs=1e-8)
    a, b = torch.randn(6, 18, generator=g).double(), torch.randn(6, 18, generator=g).double()
    assert ws2_loss(a, b).item() == pytest.approx(ws2_loss(b, a).item(), rel=1e-10)
    X, Z = torch.softmax(a, 1), torch.softmax(b, 1)
    assert gaussian_w2(X, Z).item() == pytest.approx(gaussian_w2(Z, X).item(), rel=1e-10)
    assert gaussian_w2(X, Z).item() > 0


def test_listnet_by_hand_2x3():
    # row 1: -(3/4 log 1/2 + 1/8 log 1/4 + 1/8 log 1/4) = 3/4 ln 2 + 1/2 ln 2 = 5/4 ln 2; row 2 is the same
    # permutation of the same numbers, so the mean over the two queries is 5/4 ln 2.
    assert listnet_loss(P.log(), Y.log()).item() == pytest.approx(1.25 * LOG(2), abs=1e-12)
    # integer grades [2, 1, 0] and scores [0, 0, 0]: Y = [e^2, e, 1] / (e^2 + e + 1), P uniform, so the
    # cross-entropy is -sum_j Y_j log(1/3) = ln 3 whatever Y is.
    assert listnet_loss(torch.zeros(1, 3), torch.tensor([[2.0, 1.0, 0.0]])).item() == pytest.approx(LOG(3), abs=1e-6)


def test_listnet_on_two_documents_is_two_way_softmax_cross_entropy():
    s = torch.tensor([[0.3, -0.4]])
    tau = 0.5
    target = torch.softmax(torch.tensor([[1.0, 0.0]]), dim=1)  # [e, 1] / (e + 1)
    expected = F.cross_entropy(s / tau, target)  # torch's soft-label cross-entropy over the two classes
    assert listnet_loss(s, torch.tensor([[1.0, 0.0]]), temperature=tau).item() == pytest.approx(expected.item())
    # and by hand: -(e/(1+e)) log sigmoid(d) - (1/(1+e)) log sigmoid(-d), d = (0.3 + 0.4) / 0.5 = 1.4
    e, d = math.e, 1.4
    by_hand = -(e / (1 + e)) * LOG(1 / (1 + math.exp(-d))) - (1 / (1 + e)) * LOG(1 / (1 + math.exp(d)))
    assert expected.item() == pytest.approx(by_hand, abs=1e-6)


def test_lambdaloss_by_hand_2x3():
    # tau = 1, sigma = 1, mu = 10. D_r = log2(1 + r);
    # l = -sum_{y_i > y_j} (rho + mu delta) |G_i - G_j| log2 sigmoid(s_i - s_j)
    s = torch.tensor([[3.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    y = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.0, 3.0]])
    D = lambda r: math.log2(1 + r)  # noqa: E731
    lsig = lambda x: math.log2(1 / (1 + math.exp(-x)))  # noqa: E731
    mu = 10.0
    # Row 1: ranks by score: doc0 (3) -> 1, doc2 (2) -> 2, doc1 (1) -> 3. Gains 2^y - 1 = [3, 0, 1].
    # maxDCG = 3/D(1) + 1/D(2) = 3 + 1/log2(3). G = [3, 0, 1] / maxDCG.
    max1 = 3 / D(1) + 1 / D(2)
    G = [3 / max1, 0.0, 1 / max1]
    rank = [1, 3, 2]

    def term(i, j, s_row):
        rho = abs(1 / D(rank[i]) - 1 / D(rank[j]))
        k = abs(rank[i] - rank[j])
        delta = abs(1 / D(k) - 1 / D(k + 1))
        return -(rho + mu * delta) * abs(G[i] - G[j]) * lsig(s_row[i] - s_row[j])

    row1 = term(0, 1, [3, 1, 2]) + term(0, 2, [3, 1, 2]) + term(2, 1, [3, 1, 2])  # pairs y0>y1, y0>y2, y2>y1
    # Row 2: ranks doc2 -> 1, doc1 -> 2, doc0 -> 3; gains [0, 0, 7]; maxDCG = 7; G = [0, 0, 1].
    G = [0.0, 0.0, 1.0]
    rank = [3, 2, 1]
    row2 = term(2, 0, [0, 1, 2]) + term(2, 1, [0, 1, 2])
    expected = (row1 + row2) / 2  # mean over the two queries (both have pairs)
    assert lambda_loss(s, y, mu=mu).item() == pytest.approx(expected, rel=1e-5)


def test_graded_infonce_by_hand_2x3():
    # Row 1: s = [ln 4, ln 2, ln 1], grades [2, 1, 0]; gains [3, 1, 0] -> weights [3/4, 1/4].
    #   doc0 (grade 2) vs {doc0, doc1, doc2}: -ln(4 / 7);  doc1 (grade 1) vs {doc1, doc2}: -ln(2 / 3)
    # Row 2: s = [0, 0, ln 2], grades [0, 0, 3]: doc2 vs all three: -ln(2 / 4), weight 1.
    s = torch.tensor([[LOG(4), LOG(2), 0.0], [0.0, 0.0, LOG(2)]])
    y = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    expected = ((3 / 4) * LOG(7 / 4) + (1 / 4) * LOG(3 / 2) + LOG(2)) / 2
    assert graded_infonce_loss(s, y).item() == pytest.approx(expected, abs=1e-6)


def test_graded_infonce_with_binary_grades_is_sentence_transformers_mnrl():
    """One positive at grade 1, one hard negative at 0, in-batch layout == MNRL on (query, positive, negative)."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.util import cos_sim

    g = torch.Generator().manual_seed(2)
    B, h, scale = 4, 8, 20.0
    q, pos, neg = (torch.randn(B, h, generator=g) for _ in range(3))
    mnrl = MultipleNegativesRankingLoss(model=None, scale=scale).compute_loss_from_embeddings([q, pos, neg], None)
    docs = torch.stack([pos, neg], dim=1).reshape(2 * B, h)  # query 0's docs first, as the collator flattens them
    grades = torch.tensor([[1.0, 0.0]] * B)
    scores, grades_l, mask = in_batch_layout(cos_sim(q, docs), grades)
    ours = graded_infonce_loss(scores, grades_l, mask, temperature=1 / scale)
    assert ours.item() == pytest.approx(mnrl.item(), rel=1e-5)


def test_in_batch_layout():
    # two queries, lists of 3 and 1 documents -> K = 3, M = 4 real documents
    grades = torch.tensor([[3.0, 1.0, 0.0], [2.0, float("nan"), float("nan")]])
    flat = torch.arange(8.0).reshape(2, 4)  # (B, M)
    scores, g, mask = in_batch_layout(flat, grades)
    assert scores.shape == g.shape == mask.shape == (2, 6)
    assert scores[0].tolist() == [0, 1, 2, 3, 0, 0] and scores[1].tolist() == [4, 5, 6, 7, 0, 0]
    assert g.tolist() == [[3, 1, 0, 0, 0, 0], [0, 0, 0, 2, 0, 0]]  # block-diagonal: others' documents at 0
    assert mask.tolist() == [[True] * 4 + [False] * 2] * 2
    scores, g, mask = in_batch_layout(flat, grades, in_batch_negatives=False)
    assert scores.tolist() == [[0, 1, 2], [7, 0, 0]] and mask.tolist() == [[True] * 3, [True, False, False]]


@pytest.mark.parametrize("name", sorted(PURE))
def test_masked_padding_changes_nothing(name):
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    grades = torch.randint(0, 4, (3, 5), generator=g).double()
    base = PURE[name](scores, grades, None, 0.5)
    (grad_base,) = torch.autograd.grad(base, scores)
    # append four padded columns holding garbage (huge scores, top grades, NaN) that the mask must drop
    pad_s = torch.tensor([[1e4, -1e4, 7.0, 0.0]] * 3, dtype=torch.float64)
    pad_g = torch.tensor([[3.0, 3.0, float("nan"), 2.0]] * 3, dtype=torch.float64)
    scores2 = torch.cat([scores.detach(), pad_s], dim=1).requires_grad_(True)
    mask = torch.cat([torch.ones(3, 5), torch.zeros(3, 4)], dim=1).bool()
    padded = PURE[name](scores2, torch.cat([grades, pad_g], dim=1), mask, 0.5)
    (grad_pad,) = torch.autograd.grad(padded, scores2)
    assert padded.item() == pytest.approx(base.item(), rel=1e-9, abs=1e-12)
    assert torch.allclose(grad_pad[:, :5], grad_base, atol=1e-10)
    assert torch.all(grad_pad[:, 5:] == 0)


@pytest.mark.parametrize("name", sorted(PURE))
@pytest.mark.parametrize("case", ["ties", "all_zero_grades", "length_one", "single_document", "one_query"])
def test_gradients_are_finite(name, case):
    g = torch.Generator().manual_seed(4)
    B, N = 3, 6
    scores = torch.randn(B, N, generator=g)
    grades = torch.randint(0, 4, (B, N), generator=g).float()
    mask = None
    if case == "ties":
        scores = torch.full((B, N), 0.7)
        grades = torch.tensor([[3.0, 3.0, 1.0, 1.0, 0.0, 0.0]] * B)
    elif case == "all_zero_grades":
        grades = torch.zeros(B, N)
    elif case == "length_one":  # every query has a single real document (the rest is padding)
        mask = torch.zeros(B, N, dtype=torch.bool)
        mask[:, 0] = True
    elif case == "single_document":
        scores, grades = scores[:, :1], grades[:, :1]
    elif case == "one_query":
        scores, grades = scores[:1], grades[:1]
    scores = scores.clone().requires_grad_(True)
    loss = PURE[name](scores, grades, mask, 0.05)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(scores.grad).all()


def test_losses_prefer_the_graded_order():
    """Sanity: scores that follow the grades give a lower loss than scores that reverse them."""
    grades = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 3.0, 2.0]])
    good, bad = grades / 3, -grades / 3
    for name, fn in PURE.items():
        assert fn(good, grades, None, 0.1) < fn(bad, grades, None, 0.1), name
