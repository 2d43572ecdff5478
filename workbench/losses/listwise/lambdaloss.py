"""``lambdaloss``: LambdaLoss with the NDCG-Loss2++ weighting, on graded gains 2^g - 1.

Paper: Wang, Li, Golbandi, Bendersky, Najork (2018), "The LambdaLoss Framework for Ranking Metric Optimization",
CIKM. NDCG-Loss2++ (Sec. 4.3, the paper's best variant) with the hard assignment of ranks by the current scores
(the paper's Eq. (13) with H(pi|s) a point mass on the sorted order), per query:

    l(s, y) = - sum_{i,j: y_i > y_j}  (rho_ij + mu * delta_ij) * |G_i - G_j| * log2 sigmoid(sigma * (s_i - s_j))

    s_i     = S_i / tau                 the document's score
    r_i     = rank of document i when the query's documents are sorted by s (1 = top)
    D_r     = log2(1 + r)               the nDCG discount
    G_i     = (2^{y_i} - 1) / maxDCG    graded gain, normalised by the ideal DCG of the query's list
    rho_ij  = |1/D_{r_i} - 1/D_{r_j}|                           LambdaRank's discount difference
    delta_ij = |1/D_{|r_i - r_j|} - 1/D_{|r_i - r_j| + 1}|      NDCG-Loss2's tighter bound

The weights are constants (ranks are discrete); the gradient flows through the sigmoid only. Reduction: the sum over
a query's pairs, averaged over the queries that have at least one pair with different grades (a list whose grades
are all equal carries no ranking signal and is left out; if no query has one the loss is 0).

With in-batch negatives (the default layout, :mod:`workbench.losses.listwise.base`) each query's list is every
document of the batch, other queries' documents at grade 0: they enter pairs as irrelevant documents, and they move
the ranks r.

=========== =========== ========================================================================
input       shape       meaning
=========== =========== ========================================================================
scores      (B, N)      query-by-document similarities
grades      (B, N)      graded labels (0-3 by default): gains 2^g - 1
mask        (B, N) bool real documents; masked ones are ranked last and form no pair
temperature float       tau: s = S / tau
mu          float       NDCG-Loss2 weight in Loss2++ (the paper tunes it; 10 as in allRank and
                        sentence-transformers' cross-encoder LambdaLoss)
sigma       float       the sigmoid's slope (paper: sigma = 1)
=========== =========== ========================================================================

Needs: lists with at least two different grades; memory O(B * N^2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.losses.listwise.base import ListwiseLoss, check_inputs, gains


def _lambda_weights(scores: Tensor, grades: Tensor, mask: Tensor, mu: float) -> tuple[Tensor, Tensor]:
    """(rho + mu * delta) * |G_i - G_j| and the valid-pair mask, both (B, N, N). No gradient."""
    B, N = scores.shape
    order = scores.masked_fill(~mask, float("-inf")).argsort(dim=1, descending=True, stable=True)  # (B, N)
    positions = torch.arange(1, N + 1, device=scores.device, dtype=torch.long).expand(B, N)
    rank = torch.empty_like(order).scatter_(1, order, positions)  # (B, N): rank of each document, 1 = top
    inv_disc = 1.0 / torch.log2(1.0 + rank.to(scores.dtype))  # (B, N): 1 / D_{r_i}

    # Ideal DCG: gains sorted by grade, each at its ideal rank. Masked documents have gain 0 (grade zeroed).
    g = gains(grades.to(scores.dtype)) * mask  # (B, N)
    ideal = g.sort(dim=1, descending=True).values  # (B, N)
    ideal_disc = torch.log2(1.0 + torch.arange(1, N + 1, device=scores.device, dtype=scores.dtype))  # (N,)
    max_dcg = (ideal / ideal_disc).sum(dim=1).clamp(min=1e-10)  # (B,)
    G = g / max_dcg[:, None]  # (B, N)

    rho = (inv_disc[:, :, None] - inv_disc[:, None, :]).abs()  # (B, N, N)
    # |r_i - r_j| >= 1 for i != j; the diagonal (0) is never a pair, clamp it only to keep 1/log2(1) out.
    dist = (rank[:, :, None] - rank[:, None, :]).abs().clamp(min=1).to(scores.dtype)  # (B, N, N)
    delta = (1.0 / torch.log2(1.0 + dist) - 1.0 / torch.log2(2.0 + dist)).abs()  # (B, N, N)
    weight = (rho + mu * delta) * (G[:, :, None] - G[:, None, :]).abs()  # (B, N, N)
    pairs = mask[:, :, None] & mask[:, None, :] & (grades[:, :, None] > grades[:, None, :])  # (B, N, N): y_i > y_j
    return weight, pairs


def lambda_loss(scores: Tensor, grades: Tensor, mask: Tensor | None = None, temperature: float = 1.0,
                mu: float = 10.0, sigma: float = 1.0) -> Tensor:
    """NDCG-Loss2++ (see the module docstring): per-query sum over pairs, mean over queries with a pair. Scalar."""
    scores, grades, mask = check_inputs(scores, grades, mask)
    s = scores / temperature  # (B, N)
    with torch.no_grad():
        weight, pairs = _lambda_weights(s.detach(), grades, mask, mu)
    diff = s[:, :, None] - s[:, None, :]  # (B, N, N): s_i - s_j
    log2_sig = F.logsigmoid(sigma * diff) / math.log(2.0)  # log2 sigmoid, finite for any diff
    per_query = -(torch.where(pairs, weight, torch.zeros_like(weight)) * log2_sig).sum(dim=(1, 2))  # (B,)
    has_pair = pairs.any(dim=2).any(dim=1)  # (B,)
    if not bool(has_pair.any()):
        return (s * 0.0).sum()  # no ranking signal: 0, still connected to the graph
    return per_query[has_pair].mean()


class LambdaLoss(ListwiseLoss):
    """sentence-transformers module for :func:`lambda_loss` (NDCG-Loss2++). See the module docstring."""

    loss_fn = staticmethod(lambda_loss)  # options: mu (NDCG-Loss2 weight), sigma (sigmoid slope)

    def get_config_dict(self):
        return {**super().get_config_dict(), "weighting": "NDCG-Loss2++"}

    @property
    def citation(self) -> str:
        return """@inproceedings{wang2018lambdaloss,
  title={The LambdaLoss Framework for Ranking Metric Optimization},
  author={Wang, Xuanhui and Li, Cheng and Golbandi, Nadav and Bendersky, Michael and Najork, Marc},
  booktitle={Proceedings of the 27th ACM International Conference on Information and Knowledge Management},
  pages={1313--1322},
  year={2018}
}"""


LOSS = LambdaLoss
