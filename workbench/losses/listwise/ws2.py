"""``ws2``: SyCL's list-wise loss, the 2-Wasserstein distance between Gaussians fitted to predicted and target lists.

Paper: Esfandiarpoor, Zerveas, Zhang, Mgonzo, Eickhoff, Bach (2025), "Beyond Contrastive Learning: Synthetic Data
Enables List-wise Training with Multiple Levels of Relevance" (SyCL), Sec. 3. Matched to the authors' code,
``WS2Loss`` in ``train.py`` of github.com/BatsResearch/sycl (read, not copied).

The loss, for one batch::

    P = softmax(S / tau)      row-wise, S the (B, N) query-by-document scores        (the predicted lists)
    Y = softmax(L)            row-wise, L the (B, N) graded labels, no temperature    (the target lists)

    Fit a Gaussian to the rows of P and one to the rows of Y -- the B queries are the *samples*, the N documents the
    *dimensions*:
        mu_P = (1/B) sum_i P_i                                  (N,)
        Sigma_P = c * sum_i (P_i - mu_P)(P_i - mu_P)^T          (N, N),   c = 1/(B-1)  (c = 1 when B < 2)
    and likewise mu_Y, Sigma_Y. The loss is the squared 2-Wasserstein (Frechet) distance between them:

        W2^2 = ||mu_P - mu_Y||^2 + Tr(Sigma_P + Sigma_Y - 2 (Sigma_P Sigma_Y)^{1/2})

In the authors' setting S is (B, B*K): each query against every document of the batch, with L block-diagonal (other
queries' documents at grade 0) -- see :mod:`workbench.losses.listwise.base`. It is one number per batch (no per-query
average): the Gaussians are fitted across the batch's queries.

**The trace of the matrix square root.** With C_P the (B, N) centred rows scaled by sqrt(c) (so Sigma_P = C_P^T C_P)
and A = C_P C_Y^T (B, B), the non-zero eigenvalues of Sigma_P Sigma_Y equal those of M = A A^T (Mathiasen & Hvilshoj
2020, arXiv:2009.14075, the authors' route), and those are the squared singular values sigma_k(A). So

        Tr((Sigma_P Sigma_Y)^{1/2}) = sum_k sqrt(lambda_k(M)) = sum_k sigma_k(A) = ||A||_*    (the nuclear norm)

The authors form M and take sqrt of its eigenvalues; we take the singular values of A directly (``svdvals``). Same
number in exact arithmetic, but forming M squares A, and the square root then turns rounding into a ~1e-9 error:

* A backward-stable eigensolver returns lambda_k(M + E), ||E||_2 <= p(B) u ||M||_2 (u = 2^-53 = 1.1e-16, p modest),
  so by Weyl every eigenvalue carries an absolute error up to p(B) u lambda_max. M always has a zero eigenvalue
  (centred rows sum to zero: A 1 = 0), computed as +-1e-18 or so, and d sqrt(l) = dl / (2 sqrt(l)) is unbounded at 0:
  its square root adds up to sqrt(p(B) u lambda_max) = sqrt(p(B) u) sigma_max ~ 1e-8 sigma_max. That is what made the
  value differ in the 9th digit between machines, thread counts and summation orders (issue 12).
* Zeroing eigenvalues below rtol * lambda_max (rtol ~ p(B) u, below which an eigenvalue is indistinguishable from 0)
  fixes the structural zero but not the conditioning: a true eigenvalue near the threshold still flips between kept
  and dropped, an error of sqrt(rtol lambda_max) = sqrt(rtol) sigma_max ~ 1e-7 sigma_max -- *worse* than the bound
  it replaces, whatever rtol. The sqrt of an eigenvalue of A A^T is O(sqrt(u)) accurate at best near 0.
* Singular values of A, by contrast, are perfectly conditioned: |sigma_k(A + E) - sigma_k(A)| <= ||E||_2 (Weyl) and
  | ||A + E||_* - ||A||_* | <= ||E||_* <= sqrt(B) ||E||_F. A backward-stable SVD returns sigma_k(A + E) with
  ||E||_2 <= p(B) u sigma_max, so the trace carries an O(B p(B) u sigma_max) error, with no square root of a rounding
  error anywhere. No threshold is needed: a zero singular value computed as 1e-17 contributes 1e-17.

**Error bound** (first order in u, worst case; derived term by term: the means (error <= B u |X| per entry), the
centring (<= (B + 3) u sqrt(c) ||X||_F), ||C||_F^2 (a sum of B N squares), the product A (<= N u |C_P| |C_Y|^T per
entry, so ||dA||_F <= (N + 2B + 6) u c ||X||_F ||Y||_F with the centring errors), the nuclear norm's Lipschitz bound
sqrt(B) ||dA||_F, and the SVD's B p(B) u sigma_max with p(B) <= 4B, using sigma_max <= c ||X||_F ||Y||_F): with X, Y
the (B, N) inputs, each entry carrying a relative error of at most delta from upstream (softmax: delta ~ (N + 3) u),

        |W_computed - W_exact| <= 8 c (||X||_F^2 + ||Y||_F^2) ((B + N)^2 u + delta)

(the delta term: ||grad_X W||_F <= 4 c (||X||_F + ||Y||_F), since grad ||mu||^2, grad ||C||_F^2 and the nuclear
norm's subgradient U V^T are all bounded by the input norms). For softmax rows ||X||_F^2 <= B, so the bound is at most
16 B c ((B + N)^2 u + delta) <= 32 ((B + N)^2 u + delta): 1.2e-12 for B = 6, N = 18 with exact inputs; 1.5e-10 for
B = 32, N = 256. That is the worst case: measured errors against a 40-digit mpmath reference are ~1e-16. With float32
scores the softmax's own rounding, delta ~ (N + 3) 2^-24, dominates -- the first-order dependence on its inputs any
loss has, with no square root of it. The old eigenvalue route's error, ~sqrt(p(B) u) sigma_max, is ~1e-10 to 1e-9 on
the same inputs: the tests show it leaving this bound (tests/test_losses_listwise.py). p(B) is LAPACK's "modestly
growing function" for any backward-stable SVD (LAPACK's on CPU, cuSOLVER's on GPU).

**Gradient.** The value is sum_k sigma_k exactly, so P == Y gives 0 (to the bound above: A = C C^T is then symmetric
PSD and ||A||_* = Tr A = ||C||_F^2). The gradient is that of sum_k sqrt(sigma_k^2 + eps), eps = 1e-15 -- the authors'
sqrt(lambda + eps) with lambda = sigma^2, so it equals theirs: d/dA = U diag(sigma_k / sqrt(sigma_k^2 + eps)) V^T,
finite everywhere and 0 on a zero singular value (whose singular vectors are arbitrary: weight 0 keeps the gradient
well-defined). ``svdvals``' backward is U diag(g) V^T, stable even for repeated singular values. The authors' value
carries a 2 sum_k (sqrt(sigma_k^2 + eps) - sigma_k) <= 2 B sqrt(eps) = B * 6.3e-8 offset from the eps; ours has none.
Everything after the softmax runs in float64.

=========== =========== ==============================================================================
input       shape       meaning
=========== =========== ==============================================================================
scores      (B, N)      query-by-document similarities (N = B*K in-batch, or K)
grades      (B, N)      graded labels (SyCL: 0-3); used raw as logits of the target softmax
mask        (B, N) bool real documents; a masked column gets probability 0 in both P and Y, so it adds
                        nothing to any term -- the same as dropping it
temperature float       tau for P only (the authors' ``--temperature``; trove's default 1.0 with
                        unnormalised Contriever dot products; with cosine scores use ~0.05)
=========== =========== ==============================================================================

Needs: at least 2 queries per batch for a non-trivial covariance (with B = 1 only the mean term remains).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from workbench.losses.listwise.base import ListwiseLoss, check_inputs

SQRT_EPS = 1e-15  # the authors' constant: the square root's gradient is taken at lambda + eps = sigma^2 + eps


def gaussian_w2(X: Tensor, Y: Tensor, eps: float = SQRT_EPS) -> Tensor:
    """Squared 2-Wasserstein distance between Gaussians fitted to the rows of X and of Y, both (B, N).

    Rows are samples (B of them), columns are dimensions; covariance with the unbiased 1/(B-1) factor (1 if B < 2).
    Computed in float64. Symmetric in X and Y. Error bound: see the module docstring.
    """
    if X.shape != Y.shape or X.dim() != 2:
        raise ValueError(f"X and Y must be (B, N) of the same shape, got {tuple(X.shape)} and {tuple(Y.shape)}")
    with torch.autocast(device_type=X.device.type, enabled=False):  # keep float64 under mixed precision
        return _gaussian_w2(X.double(), Y.double(), eps)


def trace_sqrt(A: Tensor, eps: float = SQRT_EPS) -> Tensor:
    """Tr((Sigma_P Sigma_Y)^{1/2}) from A = C_P C_Y^T: the nuclear norm sum_k sigma_k(A).

    Value: the singular values summed (well-conditioned: 1-Lipschitz in A, see the module docstring). Gradient: that
    of sum_k sqrt(sigma_k^2 + eps), the authors' (finite, and 0 on a zero singular value).
    """
    sigma = torch.linalg.svdvals(A)  # (B,), >= 0 by construction: no clamp, no sqrt of a rounding error
    root = torch.sqrt(sigma * sigma + eps)
    return (root - (root - sigma).detach()).sum()  # value sigma, gradient of root


def _gaussian_w2(X: Tensor, Y: Tensor, eps: float) -> Tensor:
    B = X.shape[0]
    c = 1.0 if B < 2 else 1.0 / (B - 1)
    mu_x, mu_y = X.mean(dim=0), Y.mean(dim=0)  # (N,)
    C_x = (X - mu_x) * math.sqrt(c)  # (B, N): Sigma_X = C_x^T C_x
    C_y = (Y - mu_y) * math.sqrt(c)
    A = C_x @ C_y.T  # (B, B): its singular values are the square roots of the non-zero eigenvalues of Sigma_X Sigma_Y
    mean_term = (mu_x - mu_y).pow(2).sum()
    trace_term = C_x.pow(2).sum() + C_y.pow(2).sum() - 2.0 * trace_sqrt(A, eps)  # Tr(Sigma) = ||C||_F^2
    return mean_term + trace_term


def ws2_loss(scores: Tensor, grades: Tensor, mask: Tensor | None = None, temperature: float = 1.0) -> Tensor:
    """SyCL's loss: ``gaussian_w2(softmax(scores / tau), softmax(grades))`` over the unmasked documents. Scalar."""
    scores, grades, mask = check_inputs(scores, grades, mask)
    neg_inf = float("-inf")
    P = torch.softmax((scores / temperature).masked_fill(~mask, neg_inf), dim=1)  # (B, N)
    Y = torch.softmax(grades.double().masked_fill(~mask, neg_inf), dim=1)  # (B, N)
    return gaussian_w2(P, Y).to(scores.dtype)


class WS2Loss(ListwiseLoss):
    """sentence-transformers module for :func:`ws2_loss` (SyCL). See the module docstring."""

    loss_fn = staticmethod(ws2_loss)

    @property
    def citation(self) -> str:
        return """@article{esfandiarpoor2025sycl,
  title={Beyond Contrastive Learning: Synthetic Data Enables List-wise Training with Multiple Levels of Relevance},
  author={Esfandiarpoor, Reza and Zerveas, George and Zhang, Ruochen and Mgonzo, Macton and Eickhoff, Carsten and
          Bach, Stephen H.},
  journal={arXiv preprint arXiv:2503.23239},
  year={2025}
}"""


LOSS = WS2Loss  # what `loss.name: ws2` builds (workbench.losses.listwise registry)
