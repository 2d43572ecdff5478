"""``graded_infonce``: InfoNCE with every positive grade, each positive weighted by its gain.

InfoNCE (van den Oord, Li, Vinyals 2018, "Representation Learning with Contrastive Predictive Coding", Eq. 4; in
retrieval with in-batch negatives, Karpukhin et al. 2020, DPR) scores one positive against negatives. With graded
lists every document with grade > 0 is a positive, and a positive should outrank the documents *below* it -- not the
ones above it or tied with it. Our graded form, per query i:

    l_ij = - log( exp(s_ij) / (exp(s_ij) + sum_{k: y_ik < y_ij} exp(s_ik)) )     one InfoNCE term per positive j
    w_ij = (2^{y_ij} - 1) / sum_{j'} (2^{y_ij'} - 1)                              its share of the query's gain
    L_i  = sum_{j: y_ij > 0} w_ij * l_ij,        L = mean of L_i over queries with a positive

    s = S / tau

The gains are nDCG's (2^g - 1), so a grade-3 document weighs 7x a grade-1 document. With binary grades (one positive
at 1, the rest 0) and in-batch negatives this is exactly InfoNCE as sentence-transformers'
``MultipleNegativesRankingLoss`` computes it on (query, positive, negatives) -- tested.

=========== =========== ==========================================================================
input       shape       meaning
=========== =========== ==========================================================================
scores      (B, N)      query-by-document similarities
grades      (B, N)      graded labels (0-3 by default); > 0 is a positive
mask        (B, N) bool real documents; masked ones are in no candidate set
temperature float       tau
=========== =========== ==========================================================================

Needs: a positive (grade > 0) per query; a query without one is left out of the mean (loss 0 if none has one).
Memory O(B * N^2).
"""

from __future__ import annotations

import torch
from torch import Tensor

from workbench.losses.listwise.base import ListwiseLoss, check_inputs, gains


def graded_infonce_loss(scores: Tensor, grades: Tensor, mask: Tensor | None = None,
                        temperature: float = 1.0) -> Tensor:
    """Gain-weighted InfoNCE over every positive, each against the documents graded below it. Scalar."""
    scores, grades, mask = check_inputs(scores, grades, mask)
    s = scores / temperature  # (B, N)
    positive = mask & (grades > 0)  # (B, N)
    # candidates[b, j, k]: document k is in positive j's softmax -- itself, or a real document graded below it.
    below = mask[:, None, :] & (grades[:, None, :] < grades[:, :, None])  # (B, N, N)
    eye = torch.eye(s.shape[1], dtype=torch.bool, device=s.device)[None]  # (1, N, N)
    candidates = below | eye  # (B, N, N)
    logits = s[:, None, :].expand(-1, s.shape[1], -1).masked_fill(~candidates, float("-inf"))  # (B, N, N)
    # -log softmax of the positive itself: logsumexp over its candidate set minus its own score.
    nll = torch.logsumexp(logits, dim=2) - s  # (B, N): l_ij
    g = gains(grades) * positive  # (B, N)
    total = g.sum(dim=1)  # (B,)
    has_pos = total > 0
    if not bool(has_pos.any()):
        return (s * 0.0).sum()  # no positive anywhere: 0, still connected to the graph
    w = g / total.clamp(min=1e-12)[:, None]  # (B, N): w_ij, 0 for non-positives
    per_query = (w * nll.masked_fill(~positive, 0.0)).sum(dim=1)  # (B,)
    return per_query[has_pos].mean()


class GradedInfoNCELoss(ListwiseLoss):
    """sentence-transformers module for :func:`graded_infonce_loss`. See the module docstring."""

    loss_fn = staticmethod(graded_infonce_loss)

    @property
    def citation(self) -> str:
        return """@article{oord2018cpc,
  title={Representation Learning with Contrastive Predictive Coding},
  author={van den Oord, Aaron and Li, Yazhe and Vinyals, Oriol},
  journal={arXiv preprint arXiv:1807.03748},
  year={2018}
}"""


LOSS = GradedInfoNCELoss
