"""Dual consistency filtering of (query, positive) pairs (CoRNStack).

Suresh et al. 2025, "CoRNStack: High-Quality Contrastive Data for Better Code Retrieval and Reranking"
(arXiv 2412.01007), "Dual Consistency Filtering": embed every query and every candidate document, score all pairs,
and keep a pair only if its positive "ranks in the top-two most similar matches and surpasses a set similarity
threshold" (project page; Jina-Code-v2 embeddings; a third-party summary gives the threshold as 0.7, unchecked
against the PDF). This module also checks the reverse direction, the query among the positive's ``k`` most similar
queries, so a document that many queries match better does not stay paired with a weak one;
``bidirectional=False`` gives the one-directional rule.

Definitions (``S`` = cosine similarity, rows are pairs; pair ``i`` has query group ``g_i`` and positive ``p_i``;
``Pos(g)`` = positives of every pair in group ``g``; ``Q(d)`` = groups that have ``d`` among their positives)::

    doc_rank(i)   = #{ j not in Pos(g_i)   : S(g_i, j)  > S(g_i, p_i) }      # (a) keep if doc_rank < k
    query_rank(i) = #{ g not in Q(p_i)     : S(g, p_i)  > S(g_i, p_i) }      # (b) keep if query_rank < k
    keep(i)       = (a) and (b) and S(g_i, p_i) >= threshold                 # (c)

Why the exclusions: a query's other positives (say a synthetic grade-3 document and the real one) are not
competitors of each other, and two queries labelled relevant to the same document are not either. Ties count in the
pair's favour (strict ``>``), so an exact duplicate of the positive does not evict it. Without ``groups`` every row is
its own query.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ConsistencyResult", "dual_consistency", "dual_consistency_mask", "normalize", "load_encoder", "embed",
           "dual_consistency_texts"]


@dataclass
class ConsistencyResult:
    keep: np.ndarray  # (Q,) bool
    similarity: np.ndarray  # (Q,) cosine of each pair
    doc_rank: np.ndarray  # (Q,) int: competing documents scoring above the positive
    query_rank: np.ndarray  # (Q,) int: competing queries scoring above this query (0 when not bidirectional)
    k: int
    threshold: float
    bidirectional: bool

    def counts(self) -> dict:
        """How many pairs each condition rejects (a pair can fail several), and how many survive."""
        return {"pairs": int(self.keep.size), "kept": int(self.keep.sum()),
                "failed_doc_rank": int((self.doc_rank >= self.k).sum()),
                "failed_query_rank": int((self.query_rank >= self.k).sum()) if self.bidirectional else 0,
                "failed_threshold": int((self.similarity < self.threshold).sum())}


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero), so dot products are cosines."""
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n == 0, 1.0, n)


def _check(q_emb, d_emb, pos_index, groups, k):
    q_emb, d_emb = np.asarray(q_emb), np.asarray(d_emb)
    if q_emb.ndim != 2 or d_emb.ndim != 2 or q_emb.shape[1] != d_emb.shape[1]:
        raise ValueError(f"expected q_emb (Q, D) and d_emb (N, D), got {q_emb.shape} and {d_emb.shape}")
    pos_index = np.asarray(pos_index, dtype=np.int64)
    if pos_index.shape != (q_emb.shape[0],):
        raise ValueError(f"pos_index must have shape ({q_emb.shape[0]},), got {pos_index.shape}")
    if pos_index.size and (pos_index.min() < 0 or pos_index.max() >= d_emb.shape[0]):
        raise ValueError(f"pos_index out of range [0, {d_emb.shape[0]})")
    groups = np.arange(q_emb.shape[0]) if groups is None else np.asarray(groups)
    if groups.shape != (q_emb.shape[0],):
        raise ValueError(f"groups must have shape ({q_emb.shape[0]},), got {groups.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return q_emb, d_emb, pos_index, groups


def _members(key: np.ndarray, value: np.ndarray, n_keys: int) -> list[np.ndarray]:
    """For each key 0..n_keys-1, the distinct values paired with it (one sort, O(Q log Q))."""
    order = np.lexsort((value, key))
    key, value = key[order], value[order]
    bounds = np.searchsorted(key, np.arange(n_keys + 1))
    return [np.unique(value[bounds[i]:bounds[i + 1]]) for i in range(n_keys)]


def dual_consistency(q_emb, d_emb, pos_index, k: int = 2, threshold: float = 0.7, groups=None,
                     bidirectional: bool = True, chunk: int = 1024) -> ConsistencyResult:
    """Ranks, similarities and the keep mask of the rule in the module docstring.

    ``q_emb`` (Q, D): one row per pair (rows of one query share a ``groups`` id; the group's first row is used);
    ``d_emb`` (N, D): every candidate document; ``pos_index`` (Q,): each pair's positive row in ``d_emb``.
    Embeddings need not be normalised. Memory is O(chunk * max(N, G)).
    """
    q_emb, d_emb, pos_index, groups = _check(q_emb, d_emb, pos_index, groups, k)
    qn, dn = normalize(q_emb), normalize(d_emb)
    n_pairs = qn.shape[0]
    _, group_of_row = np.unique(groups, return_inverse=True)  # (Q,) dense group ids 0..G-1
    group_of_row = group_of_row.reshape(-1)
    n_groups = int(group_of_row.max()) + 1 if n_pairs else 0
    first_row = np.zeros(n_groups, dtype=np.int64)
    first_row[group_of_row[::-1]] = np.arange(n_pairs)[::-1]  # the first row of each group
    group_emb = qn[first_row]  # (G, D): one embedding per query group
    # Pos(g) and Q(d) as index lists: the exclusions are sparse, so no (G, N) mask is built.
    pos_of_group = _members(group_of_row, pos_index, n_groups)
    groups_of_doc = _members(pos_index, group_of_row, d_emb.shape[0])

    sim = np.zeros(n_pairs)
    doc_rank = np.zeros(n_pairs, dtype=np.int64)
    query_rank = np.zeros(n_pairs, dtype=np.int64)
    for s in range(0, n_pairs, chunk):
        rows = np.arange(s, min(s + chunk, n_pairs))
        g = group_of_row[rows]
        # Every comparison reads its two sides from one matrix product, so the positive never "beats" itself
        # through rounding.
        scores = group_emb[g] @ dn.T  # (c, N)
        sim[rows] = scores[np.arange(rows.size), pos_index[rows]]
        for r in range(rows.size):
            scores[r, pos_of_group[g[r]]] = -np.inf  # the query's own positives do not compete
        doc_rank[rows] = (scores > sim[rows, None]).sum(axis=1)
        if bidirectional:
            col = group_emb @ dn[pos_index[rows]].T  # (G, c): every query against each pair's positive
            own = col[g, np.arange(rows.size)].copy()  # (c,)
            for r in range(rows.size):
                col[groups_of_doc[pos_index[rows[r]]], r] = -np.inf  # nor do the positive's own queries
            query_rank[rows] = (col > own[None, :]).sum(axis=0)
    keep = (doc_rank < k) & (sim >= threshold)
    if bidirectional:
        keep &= query_rank < k
    return ConsistencyResult(keep, sim, doc_rank, query_rank, k, float(threshold), bidirectional)


def dual_consistency_mask(q_emb, d_emb, pos_index, k: int = 2, threshold: float = 0.7, groups=None,
                          bidirectional: bool = True) -> np.ndarray:
    """(Q,) bool: which (query, positive) pairs pass dual consistency filtering (module docstring)."""
    return dual_consistency(q_emb, d_emb, pos_index, k, threshold, groups, bidirectional).keep


# ----------------------------------------------------------------------------------------------- text wrapper


def load_encoder(model: str):
    """A sentence-transformers encoder for a registry name (``minilm-l6``, ``tiny-bert``), a folder or a hub id."""
    from sentence_transformers import SentenceTransformer

    from workbench.models import resolve_model

    return SentenceTransformer(resolve_model(model))


def embed(encoder, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """(len(texts), D) float32, L2-normalised."""
    if not texts:
        return np.zeros((0, encoder.get_sentence_embedding_dimension()), dtype=np.float32)
    return np.asarray(encoder.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False), dtype=np.float32)


def dual_consistency_texts(queries: list[str], docs: list[str], pos_index, encoder, k: int = 2,
                           threshold: float = 0.7, groups=None, bidirectional: bool = True,
                           batch_size: int = 64) -> ConsistencyResult:
    """Encode ``queries`` (one per pair) and ``docs`` with ``encoder`` (a model name or a SentenceTransformer),
    then apply :func:`dual_consistency`. Identical query texts are encoded once."""
    if isinstance(encoder, str):
        encoder = load_encoder(encoder)
    uniq = list(dict.fromkeys(queries))
    where = {q: i for i, q in enumerate(uniq)}
    q_emb = embed(encoder, uniq, batch_size)[[where[q] for q in queries]]  # (Q, D)
    return dual_consistency(q_emb, embed(encoder, docs, batch_size), pos_index, k, threshold, groups, bidirectional)
