"""Training losses, one per file, each a sentence-transformers / trainer loss module plus its pure maths.

List-wise embedding losses on graded relevance (inputs and layout: :mod:`workbench.losses.listwise_base`):

* ``ws2`` -- SyCL's 2-Wasserstein distance between Gaussians of predicted and target lists (:mod:`.ws2`);
* ``listnet`` -- ListNet's top-one cross-entropy (:mod:`.listnet`);
* ``lambdaloss`` -- LambdaLoss, NDCG-Loss2++ weighting, graded gains (:mod:`.lambdaloss`);
* ``graded_infonce`` -- InfoNCE over every positive grade, gain-weighted (:mod:`.graded_infonce`).

The binary baseline ``infonce`` is sentence-transformers' own ``MultipleNegativesRankingLoss``, used as is (see
:mod:`workbench.training.embedding`).
"""

from workbench.losses.graded_infonce import GradedInfoNCELoss, graded_infonce_loss
from workbench.losses.lambdaloss import LambdaLoss, lambda_loss
from workbench.losses.listnet import ListNetLoss, listnet_loss
from workbench.losses.ws2 import WS2Loss, gaussian_w2, ws2_loss

# name -> (loss module class, pure function on (scores, grades, mask, temperature, ...))
LISTWISE_LOSSES = {
    "ws2": (WS2Loss, ws2_loss),
    "listnet": (ListNetLoss, listnet_loss),
    "lambdaloss": (LambdaLoss, lambda_loss),
    "graded_infonce": (GradedInfoNCELoss, graded_infonce_loss),
}

__all__ = [
    "LISTWISE_LOSSES",
    "WS2Loss", "ws2_loss", "gaussian_w2",
    "ListNetLoss", "listnet_loss",
    "LambdaLoss", "lambda_loss",
    "GradedInfoNCELoss", "graded_infonce_loss",
]
