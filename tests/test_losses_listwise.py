"""The list-wise losses' maths, on tensors: hand-computed 2x3 values, independent references, invariances, gradients."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workbench.losses import listwise
from workbench.losses.listwise.base import in_batch_layout
from workbench.losses.listwise.graded_infonce import graded_infonce_loss
from workbench.losses.listwise.lambdaloss import lambda_loss
from workbench.losses.listwise.listnet import listnet_loss
from workbench.losses.listwise.ws2 import SQRT_EPS, gaussian_w2, trace_sqrt, ws2_loss

LOG = math.log
PURE = {name: listwise.get(name).loss_fn for name in listwise.NAMES}


def test_the_registry_is_the_files_and_each_module_shell_calls_its_pure_function():
    assert listwise.NAMES == ("graded_infonce", "lambdaloss", "listnet", "ws2")
    assert PURE == {"graded_infonce": graded_infonce_loss, "lambdaloss": lambda_loss, "listnet": listnet_loss,
                    "ws2": ws2_loss}
    assert listwise.get("lambdaloss").option_names() == ("mu", "sigma")
    with pytest.raises(KeyError, match="did you mean 'ws2'"):
        listwise.get("ws3")

# Tolerances below come from error analyses in units of the unit roundoff u (half the machine epsilon): every basic
# float operation returns the exact result times (1 + d), |d| <= u. Not from one machine's output.
U64 = 2.0 ** -53  # 1.1e-16
U32 = 2.0 ** -24  # 6.0e-8


def w2_bound(X, Y, delta=0.0):
    """ws2's stated worst-case error bound, derived term by term in workbench/losses/ws2.py's docstring:
    |W_computed - W_exact| <= 8 c (||X||_F^2 + ||Y||_F^2) ((B + N)^2 u + delta), c = 1/(B-1), for (B, N) inputs
    that carry a relative error delta each."""
    B, N = X.shape
    c = 1.0 if B < 2 else 1.0 / (B - 1)
    return 8 * c * float((X.double() ** 2).sum() + (Y.double() ** 2).sum()) * ((B + N) ** 2 * U64 + delta)


def softmax_delta(N, logit_err=0.0):
    """Relative error of a float64 softmax entry over N logits: the max subtraction, exp, the N-term sum and the
    division (N + 3 roundings), plus twice the logits' own absolute error (d log p_j = ds_j - sum_k p_k ds_k)."""
    return (N + 3) * U64 + 2 * logit_err


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
    # Tolerance: the stated bound, the softmax inputs carrying their own rounding plus that of the logits: log (1
    # rounding of |log p| <= ln 8) and, for the tau = 0.1 line, the * 0.1 and / 0.1 (2 more). ~1e-13: the authors'
    # eps offset in the value (2 sqrt(1e-15) = 6.3e-8 from the always-zero eigenvalue) or a 1/B covariance fails it.
    tol = w2_bound(P, Y, softmax_delta(3, 3 * U64 * LOG(8)))
    assert ws2_loss(P.log(), Y.log()).item() == pytest.approx(21 / 128, abs=tol)
    # the temperature divides the scores only: scores 0.1 * log P with tau = 0.1 give the same P
    assert ws2_loss(0.1 * P.log(), Y.log(), temperature=0.1).item() == pytest.approx(21 / 128, abs=tol)


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
    # The *reference* is the inaccurate side: cp @ cy (12 x 12) has rank B - 1 = 4, and its 8 zero eigenvalues come
    # out as +-N u ||cp cy|| or so, each adding up to sqrt(N u ||cp cy||) (~1e-9) to the trace of sqrtm, times 2 in W.
    # Still below the authors' eps offset (6.3e-8), so this also tells our value from theirs.
    n_zero = p.shape[1] - (p.shape[0] - 1)
    tol = (2 * n_zero * math.sqrt(p.shape[1] * U64 * np.linalg.norm(cp @ cy, 2))
           + w2_bound(torch.tensor(p), torch.tensor(y)))
    assert tol < 2 * math.sqrt(SQRT_EPS)
    assert ws2_loss(scores, grades, temperature=0.5).item() == pytest.approx(ref, abs=tol)


def test_ws2_is_zero_when_p_equals_y_and_symmetric():
    """To the stated bound (~1e-12 here). The old eigenvalue route failed both on an AMD EPYC with MKL: 6.7e-11 apart
    for (a, b) vs (b, a), from sqrt of a zero eigenvalue computed as ~1e-18 (issue 12)."""
    g = torch.Generator().manual_seed(1)
    grades = torch.randint(0, 4, (6, 18), generator=g).double()
    tau = 0.05
    Yg = torch.softmax(grades, 1)
    assert abs(gaussian_w2(Yg, Yg).item()) <= w2_bound(Yg, Yg)  # exactly equal inputs: rounding only
    # P = softmax(S / tau) equals Y = softmax(grades) when S = tau * grades, up to the two roundings of
    # (tau * g) / tau (<= 2 u * 3 on the logits) and each softmax's own
    assert abs(ws2_loss(tau * grades, grades, temperature=tau).item()) <= w2_bound(Yg, Yg, softmax_delta(18, 6 * U64))
    a, b = torch.randn(6, 18, generator=g).double(), torch.randn(6, 18, generator=g).double()
    X, Z = torch.softmax(a, 1), torch.softmax(b, 1)
    # both orders are within the bound of the same exact value (W is symmetric in exact arithmetic)
    assert ws2_loss(a, b).item() == pytest.approx(ws2_loss(b, a).item(), abs=2 * w2_bound(X, Z, softmax_delta(18)))
    assert gaussian_w2(X, Z).item() == pytest.approx(gaussian_w2(Z, X).item(), abs=2 * w2_bound(X, Z))
    assert gaussian_w2(X, Z).item() > 0


def _exact_w2(X, Y, dps=40):
    """W2^2 in 40-digit arithmetic (mpmath) from the definition, by another route than the code's: the Bures form
    Tr(Sigma_X + Sigma_Y) - 2 Tr((Sigma_X^{1/2} Sigma_Y Sigma_X^{1/2})^{1/2}) on the explicit N x N covariances,
    square roots through symmetric eigendecompositions. A zero eigenvalue computed as 1e-40 adds 1e-20: nothing."""
    import mpmath

    mpmath.mp.dps = dps
    B, N = X.shape
    x, y = mpmath.matrix(X.tolist()), mpmath.matrix(Y.tolist())  # exact: every float64 is an mpf
    c = mpmath.mpf(1) / (B - 1) if B > 1 else mpmath.mpf(1)

    def mean_cov(Z):
        mu = [mpmath.fsum(Z[i, j] for i in range(B)) / B for j in range(N)]
        cov = mpmath.matrix(N, N)
        for j in range(N):
            for k in range(N):
                cov[j, k] = c * mpmath.fsum((Z[i, j] - mu[j]) * (Z[i, k] - mu[k]) for i in range(B))
        return mu, cov

    def psd_sqrt(S):
        d, Q = mpmath.eigsy(S)
        return Q * mpmath.diag([mpmath.sqrt(max(v, 0)) for v in d]) * Q.T

    (mx, sx), (my, sy) = mean_cov(x), mean_cov(y)
    r = psd_sqrt(sx)
    cross = sum(mpmath.sqrt(max(v, 0)) for v in mpmath.eigsy(r * sy * r)[0])
    trace = sum(sx[j, j] + sy[j, j] for j in range(N))
    return float(sum((a - b) ** 2 for a, b in zip(mx, my)) + trace - 2 * cross)


@pytest.mark.parametrize("B, N, tau", [(6, 7, 0.5), (8, 5, 0.05), (2, 3, 1.0), (1, 4, 1.0)],
                         ids=["full-rank", "rank-deficient", "two-queries", "one-query"])
def test_ws2_is_within_the_stated_bound_of_a_40_digit_reference(B, N, tau):
    """The bound itself, against an exact value: N < B - 1 leaves B - N extra zero singular values (the old route's
    worst case, one sqrt(u) error each); B = 1 leaves the mean term alone."""
    g = torch.Generator().manual_seed(100 + B)
    X = torch.softmax(torch.randn(B, N, generator=g, dtype=torch.float64) / tau, 1)
    Y = torch.softmax(torch.randint(0, 4, (B, N), generator=g).double(), 1)
    exact = _exact_w2(X, Y)
    assert abs(gaussian_w2(X, Y).item() - exact) <= w2_bound(X, Y)
    assert exact > 1e3 * w2_bound(X, Y)  # a meaningful comparison: the bound is far below the value


def _authors_ws2(scores, grades, temperature):
    """The authors' WS2Loss.forward + calc_dist (github.com/BatsResearch/sycl, train.py), re-typed: their [n, b]
    layout, explicit covariances, the general eigensolver on M = (C_X^T C_Y)(C_Y^T C_X), sqrt(lambda + 1e-15)."""
    X = torch.softmax(scores / temperature, dim=1).transpose(0, 1).double()  # [n, b]
    Y = torch.softmax(grades.double(), dim=1).transpose(0, 1)
    mu_X, mu_Y = X.mean(dim=1, keepdim=True), Y.mean(dim=1, keepdim=True)
    b = X.shape[1]
    fact = 1.0 if b < 2 else 1.0 / (b - 1)
    E_X, E_Y = X - mu_X, Y - mu_Y
    cov_X, cov_Y = E_X @ E_X.t() * fact, E_Y @ E_Y.t() * fact
    C_X, C_Y = E_X * math.sqrt(fact), E_Y * math.sqrt(fact)
    M = (C_X.t() @ C_Y) @ (C_Y.t() @ C_X)
    sq_tr_cov = (torch.linalg.eigvals(M) + 1e-15).sqrt().abs().sum()
    return torch.trace(cov_X + cov_Y) - 2.0 * sq_tr_cov + ((mu_X - mu_Y) ** 2).sum()


@pytest.mark.parametrize("B, N, tau", [(6, 18, 0.5), (8, 32, 0.05), (4, 12, 1.0)])
def test_ws2_is_the_authors_loss_less_their_eps_offset_with_their_gradient(B, N, tau):
    g = torch.Generator().manual_seed(10 + B)
    scores = torch.randn(B, N, generator=g, dtype=torch.float64, requires_grad=True)
    grades = torch.randint(0, 4, (B, N), generator=g).double()
    ours = ws2_loss(scores, grades, temperature=tau)
    theirs = _authors_ws2(scores, grades, tau)
    (g_ours,) = torch.autograd.grad(ours, scores)
    (g_theirs,) = torch.autograd.grad(theirs, scores)
    # Their trace term holds -2 sum_k sqrt(lambda_k + eps) where ours holds -2 sum_k sigma_k (lambda_k = sigma_k^2), so
    # ours - theirs = 2 sum_k (sqrt(sigma_k^2 + eps) - sigma_k), sigma_k the singular values of A = C_P C_Y^T (numpy's
    # SVD here, not torch's).
    P, Y = torch.softmax(scores.detach() / tau, 1), torch.softmax(grades, 1)
    c = 1.0 / (B - 1)
    A = ((P - P.mean(0)) @ (Y - Y.mean(0)).T).numpy() * c
    sigma = np.linalg.svd(A, compute_uv=False)
    offset = 2 * np.sum(np.sqrt(sigma ** 2 + SQRT_EPS) - sigma)
    assert offset >= 2 * math.sqrt(SQRT_EPS) * 0.999  # at least the always-zero singular value's 2 sqrt(eps)
    # Their value's error: each eigenvalue of M is off by up to p(B) u lambda_max (p(B) = 4B), and
    # d sqrt(lambda + eps) / d lambda <= 1 / (2 sqrt(eps)); B of them, times 2. Plus our bound.
    lam_max = sigma.max() ** 2
    tol = B * 4 * B * U64 * lam_max / math.sqrt(SQRT_EPS) + w2_bound(P, Y, softmax_delta(N))
    assert ours.item() - theirs.item() == pytest.approx(offset, abs=tol)
    # Same gradient: both are d/dS sum_k sqrt(lambda_k + eps). Theirs weighs the zero eigenvalue by 1/(2 sqrt(eps))
    # = 1.6e7 times a computed d lambda_0 that vanishes only to u sigma_max^2 / sigma_min (its eigenvector's error,
    # over the gap to the smallest non-zero one); through C (norm <= 1) and the softmax Jacobian (<= 1 / tau).
    s_min = sigma[sigma > 1e-12 * sigma.max()].min()
    g_tol = 4 * B * U64 * lam_max / (s_min * math.sqrt(SQRT_EPS)) / tau + 64 * (B + N) ** 2 * U64 / tau
    assert (g_ours - g_theirs).abs().max().item() <= g_tol
    assert g_tol < 1e-3 * g_ours.abs().max().item()  # far below the gradient: a wrong gradient cannot hide in it


def _eigen_route_trace(M):
    """The old un-thresholded formula: sum_k sqrt(lambda_k(M)), M = A A^T, negative rounding clamped to 0."""
    return torch.linalg.eigvalsh(M).clamp(min=0.0).sqrt().sum().item()


def test_rounding_size_noise_moves_the_trace_within_the_bound_and_the_eigen_route_by_1e_9():
    """Simulates another machine's rounding (issue 12: an AMD EPYC with MKL): perturb each formula's input matrix by
    a relative 1e-15 (~10 u), 16 times. Singular values move by at most the perturbation's norm (Weyl); the square
    root of M's always-zero eigenvalue moves by sqrt(1e-15 lambda_max) = 3e-8 sigma_max."""
    g = torch.Generator().manual_seed(1)
    B, N, delta = 6, 18, 1e-15
    X = torch.softmax(torch.randn(B, N, generator=g, dtype=torch.float64), 1)
    Y = torch.softmax(torch.randint(0, 4, (B, N), generator=g).double(), 1)
    c = 1.0 / (B - 1)
    A = ((X - X.mean(0)) @ (Y - Y.mean(0)).T) * c  # (B, B), as in gaussian_w2
    M = A @ A.T
    s_max = torch.linalg.matrix_norm(A, 2).item()
    rng = np.random.default_rng(0)  # numpy's PCG64: the same draws on every platform
    new0, old0 = trace_sqrt(A).item(), _eigen_route_trace(M)
    new_moves, old_moves = [], []
    for _ in range(16):
        E = torch.from_numpy(rng.standard_normal((B, B)))
        E *= delta * s_max / torch.linalg.matrix_norm(E, 2)  # ||E||_2 = delta sigma_max
        new_moves.append(abs(trace_sqrt(A + E).item() - new0))
        G = torch.from_numpy(rng.standard_normal((B, B)))
        F_ = (G + G.T) / 2  # symmetric, indefinite, like rounding
        F_ *= delta * s_max ** 2 / torch.linalg.matrix_norm(F_, 2)  # ||F||_2 = delta lambda_max
        old_moves.append(abs(_eigen_route_trace(M + F_) - old0))
    # Weyl: sum_k |d sigma_k| <= B ||E||_2; each of the two SVDs adds <= B p(B) u sigma_max, p(B) = 4B.
    bound = B * s_max * (delta + 2 * 4 * B * U64)
    assert max(new_moves) <= bound
    # Negative control: the old formula leaves the bound by orders of magnitude (~1e-10 here).
    assert max(old_moves) > 1e3 * bound


def test_ws2_is_invariant_to_query_and_document_order_within_the_bound():
    """Reordering the batch's queries (the samples) or its documents (the dimensions), or swapping P and Y, changes
    every reduction's summation order but not the exact value; each evaluation is within the bound of it."""
    g = torch.Generator().manual_seed(7)
    B, N, tau = 8, 32, 0.05  # SyCL's layout size for 8 queries x 4 documents
    scores = torch.randn(B, N, generator=g, dtype=torch.float64)
    grades = torch.randint(0, 4, (B, N), generator=g).double()
    P, Y = torch.softmax(scores / tau, 1), torch.softmax(grades, 1)
    base_loss, base_w2 = ws2_loss(scores, grades, temperature=tau).item(), gaussian_w2(P, Y).item()
    tol_loss = 2 * w2_bound(P, Y, softmax_delta(N))  # the softmax's sum order changes too
    tol_w2 = 2 * w2_bound(P, Y)  # inputs permuted exactly
    for seed in range(6):
        pg = torch.Generator().manual_seed(seed)
        rows, cols = torch.randperm(B, generator=pg), torch.randperm(N, generator=pg)
        s2, y2 = scores[rows][:, cols], grades[rows][:, cols]
        assert abs(ws2_loss(s2, y2, temperature=tau).item() - base_loss) <= tol_loss
        assert abs(gaussian_w2(P[rows][:, cols], Y[rows][:, cols]).item() - base_w2) <= tol_w2
        assert abs(gaussian_w2(Y[rows], P[rows]).item() - base_w2) <= tol_w2


def test_listnet_by_hand_2x3():
    # row 1: -(3/4 log 1/2 + 1/8 log 1/4 + 1/8 log 1/4) = 3/4 ln 2 + 1/2 ln 2 = 5/4 ln 2; row 2 is the same
    # permutation of the same numbers, so the mean over the two queries is 5/4 ln 2.
    # float64: two 3-way softmaxes (N + 3 = 6 roundings each) on logits of size <= ln 8, the log's rounding, the
    # weighted sum: <= 2 * 2 * 6 u ln 8 = 6e-15 (a wrong target temperature or mean over documents moves it by > 0.1)
    assert listnet_loss(P.log(), Y.log()).item() == pytest.approx(1.25 * LOG(2), abs=2 * 2 * 6 * U64 * LOG(8))
    # integer grades [2, 1, 0] and scores [0, 0, 0]: Y = [e^2, e, 1] / (e^2 + e + 1), P uniform, so the
    # cross-entropy is -sum_j Y_j log(1/3) = ln 3 whatever Y is.
    # float32: log 3 (<= 2 u), the target's sum to 1 (N + 3 = 6 u), the 3-term sum (2 u), each times ln 3: 10 u ln 3
    # = 6.6e-7; 16 u ln 3 = 1.05e-6 keeps a margin (a non-uniform P, e.g. temperature on the grades, fails it by 1e-2).
    got = listnet_loss(torch.zeros(1, 3), torch.tensor([[2.0, 1.0, 0.0]])).item()
    assert got == pytest.approx(LOG(3), abs=16 * U32 * LOG(3))


def test_listnet_on_two_documents_is_two_way_softmax_cross_entropy():
    s = torch.tensor([[0.3, -0.4]])
    tau = 0.5
    target = torch.softmax(torch.tensor([[1.0, 0.0]]), dim=1)  # [e, 1] / (e + 1)
    expected = F.cross_entropy(s / tau, target)  # torch's soft-label cross-entropy over the two classes
    # and by hand: -(e/(1+e)) log sigmoid(d) - (1/(1+e)) log sigmoid(-d), d = (0.3 + 0.4) / 0.5 = 1.4
    e, d = math.e, 1.4
    by_hand = -(e / (1 + e)) * LOG(1 / (1 + math.exp(-d))) - (1 / (1 + e)) * LOG(1 / (1 + math.exp(d)))
    # float32, each side: two 2-way softmaxes (N + 3 = 5 roundings each) on quantities <= |log p| + lse
    # = d + ln(1 + e^d) = 3.0 in size: 2 * 5 u * 3.0 = 1.8e-6 from the exact value (a missing temperature, d = 0.7,
    # moves it by 0.06); two float32 sides differ by twice that.
    one_side = 2 * 5 * U32 * (d + LOG(1 + math.exp(d)))
    assert listnet_loss(s, torch.tensor([[1.0, 0.0]]), temperature=tau).item() == pytest.approx(expected.item(),
                                                                                               abs=2 * one_side)
    assert expected.item() == pytest.approx(by_hand, abs=one_side)


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
    # float32. Five non-negative terms (no cancellation between them); within a term the worst is rho and delta,
    # differences of 1/D values ~1 that can be as small as 1/D(2) - 1/D(3) = 0.13: ~3 u / 0.13 = 23 u relative each,
    # plus ~10 u for log2, sigmoid, gains and products: ~40 u = 2.4e-6. rel = 1e-5 (~170 u) keeps a 4x margin; a
    # wrong rank (ties, 0-based), a log instead of log2 or a missing |G_i - G_j| all move it by > 1e-2.
    assert lambda_loss(s, y, mu=mu).item() == pytest.approx(expected, rel=1e-5)


def test_graded_infonce_by_hand_2x3():
    # Row 1: s = [ln 4, ln 2, ln 1], grades [2, 1, 0]; gains [3, 1, 0] -> weights [3/4, 1/4].
    #   doc0 (grade 2) vs {doc0, doc1, doc2}: -ln(4 / 7);  doc1 (grade 1) vs {doc1, doc2}: -ln(2 / 3)
    # Row 2: s = [0, 0, ln 2], grades [0, 0, 3]: doc2 vs all three: -ln(2 / 4), weight 1.
    s = torch.tensor([[LOG(4), LOG(2), 0.0], [0.0, 0.0, LOG(2)]])
    y = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    expected = ((3 / 4) * LOG(7 / 4) + (1 / 4) * LOG(3 / 2) + LOG(2)) / 2
    # float32: the scores ln 4, ln 2 are rounded (<= u 1.39 each, twice in a logit difference), a <= 3-term
    # logsumexp (N + 3 = 6 roundings on lse <= ln 7 = 1.95), the subtraction (u 1.95): ~17 u = 1e-6 per term; weights
    # summing to 1 and the mean keep that. 32 u = 1.9e-6. A wrong candidate set (documents above or tied with the
    # positive, e.g. doc0 in doc1's softmax) or plain (not gain) weights move it by > 0.05.
    assert graded_infonce_loss(s, y).item() == pytest.approx(expected, abs=32 * U32)


def test_graded_infonce_with_binary_grades_is_sentence_transformers_mnrl():
    """One positive at grade 1, one hard negative at 0, in-batch layout == MNRL on (query, positive, negative)."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.util import cos_sim

    g = torch.Generator().manual_seed(2)
    B, h, scale = 4, 8, 20.0
    # float64, so the comparison is of the maths, not of float32 rounding (20 x cosines would leave ~1e-5)
    q, pos, neg = (torch.randn(B, h, generator=g, dtype=torch.float64) for _ in range(3))
    mnrl = MultipleNegativesRankingLoss(model=None, scale=scale).compute_loss_from_embeddings([q, pos, neg], None)
    docs = torch.stack([pos, neg], dim=1).reshape(2 * B, h)  # query 0's docs first, as the collator flattens them
    grades = torch.tensor([[1.0, 0.0]] * B, dtype=torch.float64)
    scores, grades_l, mask = in_batch_layout(cos_sim(q, docs), grades)
    ours = graded_infonce_loss(scores, grades_l, mask, temperature=1 / scale)
    # The two sides compute the same cosines in differently blocked products: each |cos| <= 1 with <= (h + 3) u
    # error, so logits (x 20) differ by <= 2 * 20 (h + 3) u; the loss (a mean of 2B-way log-softmaxes) by twice
    # that, plus each side's logsumexp: (2B + 3) u on lse <= 20 + ln 2B. ~1.5e-13. Dropping the in-batch negatives,
    # or the hard negative, changes the loss by > 0.1.
    tol = 2 * 2 * scale * (h + 3) * U64 + 2 * (2 * B + 3) * U64 * (scale + LOG(2 * B))
    assert ours.item() == pytest.approx(mnrl.item(), abs=tol)


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
    # Exact arithmetic gives equality; padding changes only each reduction's length (5 -> 9) and blocking, so the
    # tolerance is twice one evaluation's float64 rounding error. Any leak of the garbage moves things by > 1e-2.
    B, N, tau = 3, 9, 0.5
    if name == "ws2":
        X, Y = torch.softmax(scores.detach() / tau, 1), torch.softmax(grades, 1)  # padded columns add exact zeros
        tol = 2 * w2_bound(X, Y, softmax_delta(N))
        # Gradient: d/dA = U diag(w) V^T is Lipschitz in A with constant <= 2 / sigma_min, sigma_min the smallest
        # non-zero singular value (the always-zero one's vectors, 1/sqrt(B), are annihilated by the centring);
        # ||dA||_F <= (N + 2B + 6) u c ||X|| ||Y|| (ws2.py's docstring); then through C (sqrt(c) (||C_x|| + ||C_y||))
        # and the softmax (1/tau). Plus (B + N)^2 u relative for the smooth terms. Times 4.
        c = 1.0 / (B - 1)
        Cx, Cy = (X - X.mean(0)) * math.sqrt(c), (Y - Y.mean(0)) * math.sqrt(c)
        sigma = torch.linalg.svdvals(Cx @ Cy.T)
        s_min = sigma[sigma > 1e-12 * sigma.max()].min().item()
        dA = (N + 2 * B + 6) * U64 * c * X.norm().item() * Y.norm().item()
        g_tol = 4 / tau * (2 * dA * math.sqrt(c) * (Cx.norm() + Cy.norm()).item() / s_min
                           + (B + N) ** 2 * U64 * (1 + grad_base.abs().max().item()))
    else:
        # listnet, lambdaloss, graded_infonce: sums of <= N^2 = 81 non-negative terms (pairs, or positives x
        # candidates), each a few exp/log/sigmoid roundings on quantities <= L = max(|s| / tau, 2^3 - 1 gain) in
        # size: <= N^2 u L (1 + |loss|) per evaluation; the gradient alike on its own scale, over tau.
        L = max(scores.abs().max().item() / tau, 7.0)
        tol = 2 * N ** 2 * U64 * L * (1 + abs(base.item()))
        g_tol = 2 * N ** 2 * U64 * L * (1 + grad_base.abs().max().item()) / tau
    assert padded.item() == pytest.approx(base.item(), abs=tol)
    assert (grad_pad[:, :5] - grad_base).abs().max().item() <= g_tol
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
