"""Top-k search over a corpus: exact chunked inner product (default), FAISS, sparse dot product, and score fusion.

All searches rank by inner product; cosine similarity is inner product over L2-normalised vectors (the encoders
normalise when asked to). Exact search never holds more than ``query_block x corpus_chunk`` scores at once, so it
scales to corpora whose full score matrix would not fit in memory.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from workbench.errors import WorkbenchError

QUERY_BLOCK = 1024  # queries scored together; bounds the (queries x chunk) score matrix


def _chunked_topk(score_block: Callable[[int, int, int, int], "object"], n_queries: int, n_docs: int, k: int,
                  chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-chunk top-k lists into the global top-k.

    ``score_block(q0, q1, d0, d1)`` returns the (q1-q0, d1-d0) score tensor of queries [q0, q1) x docs [d0, d1).
    Returns ``(scores, doc_indices)``, both (n_queries, min(k, n_docs)), best first.
    """
    import torch

    k = min(k, n_docs)
    all_scores, all_idx = [], []
    for q0 in range(0, n_queries, QUERY_BLOCK):
        q1 = min(q0 + QUERY_BLOCK, n_queries)
        best_s = best_i = None
        for d0 in range(0, n_docs, chunk_size):
            d1 = min(d0 + chunk_size, n_docs)
            s = score_block(q0, q1, d0, d1)  # (Qb, n)
            s_top, i_top = torch.topk(s, min(k, d1 - d0), dim=1)  # (Qb, k')
            i_top = i_top + d0
            if best_s is None:
                best_s, best_i = s_top, i_top
            else:
                merged_s = torch.cat([best_s, s_top], dim=1)  # (Qb, k + k')
                merged_i = torch.cat([best_i, i_top], dim=1)
                best_s, pos = torch.topk(merged_s, min(k, merged_s.shape[1]), dim=1)  # (Qb, k)
                best_i = torch.gather(merged_i, 1, pos)
        all_scores.append(best_s.float().cpu().numpy())
        all_idx.append(best_i.cpu().numpy())
    return np.concatenate(all_scores), np.concatenate(all_idx)


def exact_search(queries: np.ndarray, corpus: np.ndarray, k: int, chunk_size: int = 50_000,
                 device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k: ``scores = Q @ C^T`` computed chunk by chunk (torch matmul + topk)."""
    import torch

    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(device)  # (Q, D)
    c = torch.from_numpy(np.ascontiguousarray(corpus, dtype=np.float32))  # (N, D), moved to device per chunk
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != corpus dim {c.shape[1]}")

    def block(q0, q1, d0, d1):
        return q[q0:q1] @ c[d0:d1].to(device).T  # (Qb, n)

    with torch.inference_mode():
        return _chunked_topk(block, q.shape[0], c.shape[0], k, chunk_size)


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise WorkbenchError(
            "search.backend: faiss needs the faiss-cpu package, which is not installed. Install it with "
            "pip install 'contrast-workbench[faiss]' (or pip install faiss-cpu), or set search.backend=exact."
        ) from None
    return faiss


def faiss_search(queries: np.ndarray, corpus: np.ndarray, k: int, index: str = "flat", hnsw_m: int = 32,
                 ef_search: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """FAISS inner-product search: ``flat`` (IndexFlatIP, exact) or ``hnsw`` (IndexHNSWFlat, approximate)."""
    faiss = _import_faiss()
    corpus = np.ascontiguousarray(corpus, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    dim = corpus.shape[1]
    if index == "flat":
        ix = faiss.IndexFlatIP(dim)
    elif index == "hnsw":
        ix = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        ix.hnsw.efSearch = max(ef_search, k)
    else:
        raise ValueError(f"unknown faiss index {index!r}")
    ix.add(corpus)
    scores, idx = ix.search(queries, min(k, corpus.shape[0]))  # (Q, k); -1 marks "no result" (HNSW)
    return scores, idx


def sparse_search(queries, corpus, k: int, chunk_size: int = 50_000) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of sparse dot products ``Q @ C^T`` (scipy CSR, (n, vocab)), corpus chunk by chunk."""
    import torch

    q = queries.tocsr()
    c = corpus.tocsr()

    def block(q0, q1, d0, d1):
        return torch.from_numpy((q[q0:q1] @ c[d0:d1].T).toarray().astype(np.float32))  # (Qb, n)

    return _chunked_topk(block, q.shape[0], c.shape[0], k, chunk_size)


def to_run(query_ids: list[str], doc_ids: list[str], scores: np.ndarray, idx: np.ndarray,
           keep: Callable[[float], bool] = lambda s: True) -> dict[str, dict[str, float]]:
    """(Q, k) score / index arrays -> ``{qid: {docid: score}}``; index -1 (no hit) and hits failing ``keep`` dropped."""
    run: dict[str, dict[str, float]] = {}
    for qi, q in enumerate(query_ids):
        run[q] = {doc_ids[j]: float(s) for s, j in zip(scores[qi].tolist(), idx[qi].tolist()) if j >= 0 and keep(s)}
    return run


def minmax_fuse(runs: list[dict[str, dict[str, float]]], weights: list[float]) -> dict[str, dict[str, float]]:
    """Weighted sum of per-query min-max normalised scores: the PromptReps hybrid (Zhuang et al. 2024), as the
    authors' ``hybrid.fuse`` (ielab/PromptReps) computes it.

    For run r and query q, ``norm_r(d) = (s_r(d) - min_q s_r) / (max_q s_r - min_q s_r)`` over the documents r
    retrieved for q; ``fused(d) = sum_r w_r * norm_r(d)``, a document r did not retrieve contributing 0. As in the
    authors' code, the denominator is floored at 1e-9, so a list of equal scores normalises to 0. The min and max
    are over the whole list passed in, so its depth matters: the authors fuse their depth-1000 lists (see
    ``promptreps.fusion_depth``) and this returns every fused document (cut it afterwards).
    """
    if len(runs) != len(weights):
        raise ValueError("one weight per run")
    fused: dict[str, dict[str, float]] = {}
    for q in sorted(set().union(*runs)):
        out: dict[str, float] = {}
        for run, w in zip(runs, weights):
            docs = run.get(q) or {}
            if not docs:
                continue
            lo, hi = min(docs.values()), max(docs.values())
            den = max(hi - lo, 1e-9)
            for d, s in docs.items():
                out[d] = out.get(d, 0.0) + w * (s - lo) / den
        fused[q] = out
    return fused
