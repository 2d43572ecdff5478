"""What every list-wise embedding loss shares: the score layout, masking, and the sentence-transformers module shell.

Layout (SyCL's, Esfandiarpoor et al. 2025, Sec. 3): a batch holds ``B`` queries, query ``i`` with ``K_i <= K`` graded
documents. Every query is scored against *every* document of the batch, so the score matrix is ``(B, B*K)``: column
``i*K + j`` is document ``j`` of query ``i``. Grades are laid out block-diagonally -- another query's documents get
grade 0 for this query -- so they act as in-batch negatives. Columns ``i*K + j`` with ``j >= K_i`` are padding:
masked out of every row. With ``in_batch_negatives=False`` each query sees only its own list: ``(B, K)``.

Inputs of every pure loss function here:

=========== =========== =================================================================================
name        shape       meaning
=========== =========== =================================================================================
scores      (B, N)      similarities s(q_i, d_j) (cosine or dot product), *not* divided by the temperature
grades      (B, N)      graded relevance of document j to query i (0 = irrelevant; any real scale)
mask        (B, N) bool True where document j exists for query i (padding is False); ``None`` = all True
temperature float       tau: the loss sees s / tau
=========== =========== =================================================================================

A masked entry never changes a loss value or gradient: every function drops it exactly (tested).
The collator (:mod:`workbench.training.listwise_data`) sends grades as a ``(B, K)`` tensor with NaN in the padding,
and the documents flattened (only real ones are encoded).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Iterable, Literal

import torch
from torch import Tensor, nn

GRADE_PAD = float("nan")  # the collator's padding value in the (B, K) grades tensor


def check_inputs(scores: Tensor, grades: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Validate shapes; return (scores, grades with padding zeroed, bool mask). Every row needs one real document."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be (B, N), got shape {tuple(scores.shape)}")
    if grades.shape != scores.shape:
        raise ValueError(f"grades shape {tuple(grades.shape)} != scores shape {tuple(scores.shape)}")
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    elif mask.shape != scores.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != scores shape {tuple(scores.shape)}")
    mask = mask.bool()
    if not bool(mask.any(dim=1).all()):
        raise ValueError("every query (row) needs at least one unmasked document")
    # Padding may hold NaN (the collator's marker) or garbage: zero it so no NaN can reach a product.
    grades = torch.where(mask, grades, torch.zeros_like(grades))
    return scores, grades, mask


def masked_log_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    """Row-wise log-softmax over the unmasked entries; masked entries are -inf (probability exactly 0)."""
    return torch.log_softmax(logits.masked_fill(~mask, float("-inf")), dim=1)


def gains(grades: Tensor) -> Tensor:
    """The graded gain of nDCG: 2^g - 1 (Jarvelin & Kekalainen 2002; Burges et al. 2005)."""
    return torch.pow(2.0, grades) - 1.0


def in_batch_layout(scores_flat: Tensor, grades_bk: Tensor, in_batch_negatives: bool = True
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """Place the scores of the flattened real documents into the padded list-wise layout.

    ``scores_flat``: (B, M) query-by-document similarities, M = number of real documents in the batch, in row-major
    order of ``grades_bk``'s unmasked entries (query 0's documents, then query 1's, ...).
    ``grades_bk``: (B, K) grades with NaN padding.

    Returns ``scores, grades, mask`` of shape (B, B*K) (SyCL's in-batch layout, block-diagonal grades) or, without
    in-batch negatives, (B, K).
    """
    B, K = grades_bk.shape
    real = ~torch.isnan(grades_bk)  # (B, K)
    if scores_flat.shape != (B, int(real.sum())):
        raise ValueError(f"scores_flat has shape {tuple(scores_flat.shape)}, expected ({B}, {int(real.sum())}): "
                         "one column per real document")
    cols = real.reshape(-1).nonzero(as_tuple=True)[0]  # (M,) column of each real document in the B*K layout
    scores = scores_flat.new_zeros(B, B * K)
    scores = scores.index_copy(1, cols, scores_flat)  # (B, B*K); padding columns stay 0 and are masked
    own = torch.nan_to_num(grades_bk, nan=0.0).to(scores_flat.dtype)  # (B, K)
    if not in_batch_negatives:
        idx = torch.arange(B, device=scores.device)
        return scores.view(B, B, K)[idx, idx], own, real
    grades = torch.block_diag(*own.unbind(0))  # (B, B*K): query i's grades in its own block, 0 elsewhere
    mask = real.reshape(1, B * K).expand(B, B * K)  # a padding column is padding for every query
    return scores, grades, mask


class ListwiseLoss(nn.Module):
    """A sentence-transformers loss over (query, [doc_1..doc_K], [g_1..g_K]) rows, as collated by
    :class:`workbench.training.listwise_data.ListwiseDataCollator`.

    ``forward(sentence_features, labels)``: ``sentence_features = [query_features, docs_features]`` (the documents
    of all queries flattened, only real ones), ``labels`` the (B, K) grades with NaN padding. A subclass names its
    pure function, ``loss_fn(scores, grades, mask, temperature, **options)``, which gets the laid-out
    ``(scores, grades, mask)``; ``options`` are the loss's own keyword arguments (``loss.options`` in a recipe).
    """

    loss_fn: ClassVar[Callable[..., Tensor]]

    def __init__(self, model, temperature: float = 0.05, similarity: Literal["cos", "dot"] = "cos",
                 in_batch_negatives: bool = True, **options: Any) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if similarity not in ("cos", "dot"):
            raise ValueError(f"similarity must be 'cos' or 'dot', got {similarity!r}")
        bad = set(options) - set(self.option_names())
        if bad:
            raise ValueError(f"{type(self).__name__} has no option(s) {sorted(bad)}; its options: "
                             f"{list(self.option_names()) or 'none'}")
        self.model = model
        self.temperature = float(temperature)
        self.similarity = similarity
        self.in_batch_negatives = in_batch_negatives
        self.options = options

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The loss function's own keyword arguments, after (scores, grades, mask, temperature)."""
        import inspect

        params = list(inspect.signature(cls.loss_fn).parameters)
        return tuple(params[4:])

    def similarity_fct(self, a: Tensor, b: Tensor) -> Tensor:
        from sentence_transformers.util import cos_sim, dot_score

        return (cos_sim if self.similarity == "cos" else dot_score)(a, b)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        from sentence_transformers.base.losses.merged_forward import embed_columns

        features = list(sentence_features)
        if len(features) != 2:
            raise ValueError(f"{type(self).__name__} expects [queries, flattened docs] features, got {len(features)} "
                             "columns; collate with workbench.training.listwise_data.ListwiseDataCollator")
        queries, docs = embed_columns(self.model, features)  # (B, h), (M, h)
        scores_flat = self.similarity_fct(queries, docs)  # (B, M)
        scores, grades, mask = in_batch_layout(scores_flat, labels.to(scores_flat.device).float(),
                                               self.in_batch_negatives)
        return self.compute(scores, grades, mask)

    def compute(self, scores: Tensor, grades: Tensor, mask: Tensor) -> Tensor:
        return type(self).loss_fn(scores, grades, mask, self.temperature, **self.options)

    def get_config_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "similarity": self.similarity,
                "in_batch_negatives": self.in_batch_negatives, **self.options}
