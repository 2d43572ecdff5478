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
queries' documents at grade 0) -- see :mod:`workbench.losses.listwise_base`. It is one number per batch (no per-query
average): the Gaussians are fitted across the batch's queries.

The trace of the matrix square root, stably (Mathiasen & Hvilshoj 2020, arXiv:2009.14075, as the authors do): with
C_P the (B, N) centred rows scaled by sqrt(c) (so Sigma_P = C_P^T C_P), the non-zero eigenvalues of
Sigma_P Sigma_Y equal those of the (B, B) symmetric PSD matrix M = (C_P C_Y^T)(C_P C_Y^T)^T, so
Tr((Sigma_P Sigma_Y)^{1/2}) = sum_k sqrt(lambda_k(M)). Everything after the softmax runs in float64; ``eigvalsh``
(M is symmetric) replaces the authors' general ``eigvals`` -- same eigenvalues, real by construction. M always has a
zero eigenvalue (centred rows sum to zero): the gradient is that of sqrt(lambda + eps), eps = 1e-15, as in the
authors' code (finite at 0), while the value is sqrt(lambda) exactly -- their value carries a ~2*B*3e-8 offset from
the eps; ours is exact, so P == Y gives 0 (to rounding).

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

from workbench.losses.listwise_base import ListwiseLoss, check_inputs

SQRT_EPS = 1e-15  # the authors' constant: the square root's gradient is taken at lambda + eps


def gaussian_w2(X: Tensor, Y: Tensor, eps: float = SQRT_EPS) -> Tensor:
    """Squared 2-Wasserstein distance between Gaussians fitted to the rows of X and of Y, both (B, N).

    Rows are samples (B of them), columns are dimensions; covariance with the unbiased 1/(B-1) factor (1 if B < 2).
    Computed in float64. Symmetric in X and Y.
    """
    if X.shape != Y.shape or X.dim() != 2:
        raise ValueError(f"X and Y must be (B, N) of the same shape, got {tuple(X.shape)} and {tuple(Y.shape)}")
    with torch.autocast(device_type=X.device.type, enabled=False):  # keep float64 under mixed precision
        return _gaussian_w2(X.double(), Y.double(), eps)


def _gaussian_w2(X: Tensor, Y: Tensor, eps: float) -> Tensor:
    B = X.shape[0]
    c = 1.0 if B < 2 else 1.0 / (B - 1)
    mu_x, mu_y = X.mean(dim=0), Y.mean(dim=0)  # (N,)
    C_x = (X - mu_x) * math.sqrt(c)  # (B, N): Sigma_X = C_x^T C_x
    C_y = (Y - mu_y) * math.sqrt(c)
    A = C_x @ C_y.T  # (B, B)
    M = A @ A.T  # (B, B), symmetric PSD; its eigenvalues are the non-zero ones of Sigma_X Sigma_Y
    lam = torch.linalg.eigvalsh(M).clamp(min=0.0)  # rounding can give -1e-17; sqrt of that would be NaN
    # Value sqrt(lam) exactly; gradient that of sqrt(lam + eps), the authors' (finite at lam = 0).
    root = torch.sqrt(lam + eps)
    tr_sqrt = (root - (root - lam.sqrt()).detach()).sum()
    mean_term = (mu_x - mu_y).pow(2).sum()
    trace_term = C_x.pow(2).sum() + C_y.pow(2).sum() - 2.0 * tr_sqrt  # Tr(Sigma) = ||C||_F^2
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

    def compute(self, scores: Tensor, grades: Tensor, mask: Tensor) -> Tensor:
        return ws2_loss(scores, grades, mask, self.temperature)

    @property
    def citation(self) -> str:
        return """@article{esfandiarpoor2025sycl,
  title={Beyond Contrastive Learning: Synthetic Data Enables List-wise Training with Multiple Levels of Relevance},
  author={Esfandiarpoor, Reza and Zerveas, George and Zhang, Ruochen and Mgonzo, Macton and Eickhoff, Carsten and
          Bach, Stephen H.},
  journal={arXiv preprint arXiv:2503.23239},
  year={2025}
}"""
