"""``listnet``: ListNet's top-one cross-entropy between the target and predicted list distributions.

Paper: Cao, Qin, Liu, Tsai, Li (2007), "Learning to Rank: From Pairwise Approach to Listwise Approach", ICML,
Eq. (3)-(6), with the top-one probability and phi = exp, so the top-one distribution of a score list is its softmax:

    P_i = softmax(S_i / tau)                   predicted top-one distribution of query i over its documents
    Y_i = softmax(g_i)                         target distribution from the grades (raw grades as logits)
    L   = (1/B) sum_i  - sum_j Y_ij log P_ij   cross-entropy per query, averaged over the B queries

With in-batch negatives (the default layout, :mod:`workbench.losses.listwise.base`) the list of query i is every
document of the batch, other queries' documents at grade 0 -- the same lists and targets as ``ws2``, so the two
differ only in the distance between P and Y.

=========== =========== ==========================================================================
input       shape       meaning
=========== =========== ==========================================================================
scores      (B, N)      query-by-document similarities
grades      (B, N)      graded labels, used raw as target logits (0-3 by default)
mask        (B, N) bool real documents; masked ones get probability 0 in P and Y and drop out
temperature float       tau, for the scores only
=========== =========== ==========================================================================

Needs: lists of any length >= 1 (a one-document list has loss 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from workbench.losses.listwise.base import ListwiseLoss, check_inputs, masked_log_softmax


def listnet_loss(scores: Tensor, grades: Tensor, mask: Tensor | None = None, temperature: float = 1.0) -> Tensor:
    """Mean over queries of the cross-entropy H(softmax(grades), softmax(scores / tau)). Scalar."""
    scores, grades, mask = check_inputs(scores, grades, mask)
    log_p = masked_log_softmax(scores / temperature, mask)  # (B, N), -inf where masked
    target = torch.softmax(grades.masked_fill(~mask, float("-inf")), dim=1)  # (B, N), 0 where masked
    # Zero log_p where masked before the product: 0 * -inf would be NaN.
    return -(target * log_p.masked_fill(~mask, 0.0)).sum(dim=1).mean()


class ListNetLoss(ListwiseLoss):
    """sentence-transformers module for :func:`listnet_loss`. See the module docstring."""

    loss_fn = staticmethod(listnet_loss)

    @property
    def citation(self) -> str:
        return """@inproceedings{cao2007listnet,
  title={Learning to Rank: From Pairwise Approach to Listwise Approach},
  author={Cao, Zhe and Qin, Tao and Liu, Tie-Yan and Tsai, Ming-Feng and Li, Hang},
  booktitle={Proceedings of the 24th International Conference on Machine Learning},
  pages={129--136},
  year={2007}
}"""


LOSS = ListNetLoss
