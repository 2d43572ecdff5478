"""`workbench eval retrieval`: a model on a retrieval collection -> run file, pytrec_eval metrics, results and report.

Reads top to bottom: load the collection (BEIR folder, BEIR by name, or list-wise rows) -> represent the corpus
(cached on disk by model fingerprint + corpus hash + settings) and the queries -> search the top ``search.top_k``
per query -> write ``run.trec`` -> metrics through pytrec_eval -> ``results.json`` + ``report.md``.

The metrics (``metrics:`` section, :class:`workbench_eval.metrics.MetricsConfig`) equal ``trec_eval -c -l
<metrics.relevance_threshold>`` on the qrels file as given and ``run.trec``; each way to deviate from that is a named
option, never the default.

Models (``model.kind``): ``sentence-transformers``, ``hf`` (AutoModel + mean/cls pooling), ``auto`` (one of those,
from the folder), ``bm25`` (bm25s), ``promptreps`` (a causal LM's dense/sparse/hybrid one-word representations;
the three are scored from one encoding, and ``promptreps.mode`` picks the reported one).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Literal

from workbench_eval.metrics import MetricsConfig
from workbench_eval.retrieval_data import DatasetConfig, RetrievalData, load_data
from workbench.config import register_job
from workbench.store.runs import RunConfig

RUN_FILE = "run.trec"


@dataclass
class RetrievalModelConfig:
    name: str = "minilm-l6"  # registry name, local folder or hub id (unused for bm25)
    kind: Literal["auto", "sentence-transformers", "hf", "bm25", "promptreps"] = "auto"
    pooling: Literal["mean", "cls"] = "mean"  # kind hf
    normalize: bool = True  # L2-normalise dense vectors: inner product = cosine
    max_seq_length: int | None = None  # default: the model's own (sentence-transformers) or 512 (hf)
    query_prompt: str = ""  # prepended to queries (e.g. "query: "); sentence-transformers: default = model's own
    doc_prompt: str = ""
    batch_size: int = 32
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "auto"  # auto: cuda when available
    trust_remote_code: bool = False

    def validate(self):
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.max_seq_length is not None and self.max_seq_length < 1:
            raise ValueError("max_seq_length must be >= 1")


@dataclass
class SearchConfig:
    backend: Literal["exact", "faiss"] = "exact"  # exact: chunked torch matmul + topk; faiss: needs faiss-cpu
    top_k: int = 100  # documents kept per query (the run file); metrics read up to rank 100
    corpus_chunk_size: int = 50_000  # exact search scores this many documents at a time
    faiss_index: Literal["flat", "hnsw"] = "flat"
    hnsw_m: int = 32
    ef_search: int = 256

    def validate(self):
        if self.top_k < 100:
            raise ValueError(f"top_k must be >= 100 (nDCG@100, Recall@100 and MAP@100 read 100 results), "
                             f"got {self.top_k}")
        if self.corpus_chunk_size < 1:
            raise ValueError("corpus_chunk_size must be >= 1")


@dataclass
class BM25Config:
    k1: float = 0.9
    b: float = 0.4
    method: Literal["lucene", "robertson", "atire", "bm25l", "bm25+"] = "lucene"
    stopwords: str | None = "en"
    stemmer: str | None = None  # e.g. english (Snowball, via the optional PyStemmer package)


@dataclass
class PromptRepsConfig:
    """PromptReps as its authors run it (ielab/PromptReps README: BEIR search with ``--query_max_len 512
    --passage_max_len 512 --alpha 0.5 --depth 1000``); the differences that remain are listed in
    :mod:`workbench_eval.promptreps`."""

    mode: Literal["dense", "sparse", "hybrid"] = "hybrid"  # the representation whose metrics are reported
    alpha: float = 0.5  # hybrid weight of the dense scores (sparse: 1 - alpha)
    passage_max_tokens: int = 512
    query_max_tokens: int = 512  # the authors' --query_max_len; queries are practically never cut
    sparse_max_terms: int = 128
    fusion_depth: int = 1000  # hybrid fuses the top-fusion_depth dense and sparse lists (authors' --depth 1000)
    sparse_quantize: bool = False  # true: weights rint(100 w) as the authors' Lucene impact index; false: float w
    chat: bool = True  # render the prompt through the tokenizer's chat template

    def validate(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if min(self.passage_max_tokens, self.query_max_tokens, self.sparse_max_terms, self.fusion_depth) < 1:
            raise ValueError("passage_max_tokens, query_max_tokens, sparse_max_terms and fusion_depth must be >= 1")


@register_job("eval_retrieval")
@dataclass
class RetrievalEvalConfig(RunConfig):
    model: RetrievalModelConfig = field(default_factory=RetrievalModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    bm25: BM25Config = field(default_factory=BM25Config)
    promptreps: PromptRepsConfig = field(default_factory=PromptRepsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    cache_embeddings: bool = True  # corpus representations under $WORKBENCH_HOME/cache/embeddings


@dataclass
class Retrieved:
    run: dict[str, dict[str, float]]
    model_label: str
    fingerprint: str | None
    timings: dict
    counts: dict
    info: dict = field(default_factory=dict)  # what represented the texts: cache key, dimensions, settings
    other_runs: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # promptreps: every mode


def _say(msg: str) -> None:
    print(f"[eval] {msg}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------- retrieval


def _dense_search(cfg: RetrievalEvalConfig, q, c, k: int | None = None):
    from workbench_eval.encoders import pick_device
    from workbench_eval.search import exact_search, faiss_search

    k = k or cfg.search.top_k
    if cfg.search.backend == "faiss":
        return faiss_search(q, c, k, cfg.search.faiss_index, cfg.search.hnsw_m, cfg.search.ef_search)
    return exact_search(q, c, k, cfg.search.corpus_chunk_size, pick_device(cfg.model.device))


def _corpus_key(fingerprint: str, data: RetrievalData, settings: dict) -> tuple[str, dict]:
    from workbench_eval.cache import cache_key, corpus_hash

    sha = corpus_hash(data.corpus_ids, data.corpus_texts)
    meta = {"model_fingerprint": fingerprint, "corpus_sha256": sha, "docs": len(data.corpus_ids),
            "source": data.source, "settings": settings}
    return cache_key(fingerprint, sha, settings), meta


def _retrieve_bm25(cfg: RetrievalEvalConfig, data: RetrievalData) -> Retrieved:
    from workbench_eval.bm25 import BM25Search

    bm = BM25Search(cfg.bm25.k1, cfg.bm25.b, cfg.bm25.method, cfg.bm25.stopwords, cfg.bm25.stemmer)
    t0 = time.perf_counter()
    run = bm.search(data.corpus_ids, data.corpus_texts, data.query_ids, data.query_texts, cfg.search.top_k)
    dt = time.perf_counter() - t0
    no_match = sum(1 for q in data.query_ids if not run.get(q))
    if no_match:
        _say(f"{no_match} queries share no term with the corpus; they retrieve nothing and score 0")
    return Retrieved(run, bm.label(), None, {"index_and_search_s": dt}, {"queries_no_term_match": no_match},
                     bm.settings())


def _retrieve_dense(cfg: RetrievalEvalConfig, data: RetrievalData, path: str, kind: str) -> Retrieved:
    from workbench_eval.cache import cached_encode
    from workbench_eval.encoders import HFEncoder, SentenceTransformerEncoder
    from workbench_eval.search import to_run
    from workbench.models import model_fingerprint

    m = cfg.model
    common = dict(max_seq_length=m.max_seq_length, batch_size=m.batch_size, normalize=m.normalize,
                  query_prompt=m.query_prompt, doc_prompt=m.doc_prompt, device=m.device, dtype=m.dtype,
                  trust_remote_code=m.trust_remote_code)
    t0 = time.perf_counter()
    enc = (SentenceTransformerEncoder(path, **common) if kind == "sentence-transformers"
           else HFEncoder(path, pooling=m.pooling, **common))
    t_load = time.perf_counter() - t0
    fp = model_fingerprint(path)
    key, meta = _corpus_key(fp, data, enc.settings())
    t0 = time.perf_counter()
    corpus, hit = cached_encode(key, data.corpus_texts, lambda texts: {"dense": enc.encode_corpus(texts)},
                                {"dense": "dense"}, use_cache=cfg.cache_embeddings, meta=meta)
    corpus = corpus["dense"]  # (N, D)
    t_corpus = time.perf_counter() - t0
    _say(f"corpus embeddings: {'cache hit' if hit else 'encoded'} ({len(data.corpus_ids)} docs, key {key})")
    t0 = time.perf_counter()
    queries = enc.encode_queries(data.query_texts)  # (Q, D)
    t_queries = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores, idx = _dense_search(cfg, queries, corpus)  # (Q, k)
    t_search = time.perf_counter() - t0
    timings = {"model_load_s": t_load, "encode_corpus_s": t_corpus, "encode_queries_s": t_queries,
               "search_s": t_search, "cache_hit": hit}
    if not hit:
        timings["docs_per_s"] = len(data.corpus_ids) / max(t_corpus, 1e-9)
    info = {**enc.settings(), "path": path, "embedding_dim": int(corpus.shape[1]), "search": cfg.search.backend,
            "cache_key": key if cfg.cache_embeddings else None}
    return Retrieved(to_run(data.query_ids, data.corpus_ids, scores, idx), m.name, fp, timings, {}, info)


def _retrieve_promptreps(cfg: RetrievalEvalConfig, data: RetrievalData, path: str) -> Retrieved:
    from workbench_eval.cache import cached_encode
    from workbench_eval.promptreps import PromptRepsEncoder
    from workbench_eval.search import minmax_fuse, sparse_search, to_run
    from workbench.models import model_fingerprint

    m, p = cfg.model, cfg.promptreps
    t0 = time.perf_counter()
    enc = PromptRepsEncoder(path, passage_max_tokens=p.passage_max_tokens, query_max_tokens=p.query_max_tokens,
                            sparse_max_terms=p.sparse_max_terms, sparse_quantize=p.sparse_quantize,
                            batch_size=m.batch_size, chat=p.chat,
                            device=m.device, dtype=m.dtype, trust_remote_code=m.trust_remote_code)
    t_load = time.perf_counter() - t0
    fp = model_fingerprint(path)
    key, meta = _corpus_key(fp, data, enc.settings())

    def encode(texts):
        dense, sparse = enc.encode(texts, "passage")
        return {"dense": dense, "sparse": sparse}

    t0 = time.perf_counter()
    reps, hit = cached_encode(key, data.corpus_texts, encode, {"dense": "dense", "sparse": "sparse"},
                              use_cache=cfg.cache_embeddings, meta=meta)
    t_corpus = time.perf_counter() - t0
    _say(f"corpus representations: {'cache hit' if hit else 'encoded'} ({len(data.corpus_ids)} docs, key {key})")
    t0 = time.perf_counter()
    q_dense, q_sparse = enc.encode(data.query_texts, "query")  # (Q, H), (Q, V)
    t_queries = time.perf_counter() - t0
    t0 = time.perf_counter()
    # As the authors: dense and sparse are each searched to fusion_depth, the hybrid fuses those two deep lists
    # (min-max over all of each), and only then is every run cut to the top_k it reports.
    k, depth = cfg.search.top_k, max(p.fusion_depth, cfg.search.top_k)
    s, i = _dense_search(cfg, q_dense, reps["dense"], depth)
    dense_deep = to_run(data.query_ids, data.corpus_ids, s, i)
    s, i = sparse_search(q_sparse, reps["sparse"], depth, cfg.search.corpus_chunk_size)
    sparse_deep = to_run(data.query_ids, data.corpus_ids, s, i, keep=lambda x: x > 0)
    from workbench_eval.metrics import cut_run

    hybrid_run = minmax_fuse([dense_deep, sparse_deep], [p.alpha, 1.0 - p.alpha])
    t_search = time.perf_counter() - t0
    runs = {"dense": cut_run(dense_deep, k), "sparse": cut_run(sparse_deep, k), "hybrid": cut_run(hybrid_run, k)}
    timings = {"model_load_s": t_load, "encode_corpus_s": t_corpus, "encode_queries_s": t_queries,
               "search_s": t_search, "cache_hit": hit}
    if not hit:
        timings["docs_per_s"] = len(data.corpus_ids) / max(t_corpus, 1e-9)
    nnz = reps["sparse"].getnnz(axis=1)
    counts = {"sparse_queries_without_terms": int((q_sparse.getnnz(axis=1) == 0).sum())}
    info = {**enc.settings(), "path": path, "mode": p.mode, "alpha": p.alpha, "fusion_depth": depth,
            "embedding_dim": int(reps["dense"].shape[1]),
            "sparse_terms_per_doc_mean": float(nnz.mean()) if nnz.size else 0.0, "search": cfg.search.backend,
            "cache_key": key if cfg.cache_embeddings else None}
    return Retrieved(runs[p.mode], f"{m.name} (promptreps {p.mode})", fp, timings, counts, info, runs)


def retrieve(cfg: RetrievalEvalConfig, data: RetrievalData) -> Retrieved:
    if cfg.model.kind == "bm25":
        return _retrieve_bm25(cfg, data)
    from workbench_eval.encoders import detect_kind
    from workbench.models import resolve_model

    path = resolve_model(cfg.model.name)
    if cfg.model.kind == "promptreps":
        return _retrieve_promptreps(cfg, data, path)
    kind = detect_kind(path) if cfg.model.kind == "auto" else cfg.model.kind
    return _retrieve_dense(cfg, data, path, kind)


# ----------------------------------------------------------------------------------------------- the job


def run(cfg: RetrievalEvalConfig, overwrite: bool = False) -> dict:
    from workbench.config import to_dict
    from workbench.store.files import atomic_write
    from workbench.store.runs import open_run

    from workbench_eval.metrics import evaluate, write_trec_run
    from workbench_eval.report import read_results, results_payload, write_report, write_results

    # The collection and the model are checked before the run folder exists (a corrected rerun is a fresh run).
    t_start = time.perf_counter()
    mc = cfg.metrics
    data = load_data(cfg.dataset, mc.relevance_threshold, mc.judgements_outside_corpus)
    if cfg.model.kind != "bm25":
        from workbench.models import resolve_model

        resolve_model(cfg.model.name)
    run_ = open_run(cfg.run_dir(), to_dict(cfg), overwrite=overwrite)
    if run_.done and (run_.path / "results.json").is_file():
        _say(f"{run_.path} is complete; nothing to do")
        return read_results(run_.path)
    _say(f"{data.source}: {len(data.corpus_ids)} docs, {len(data.qrels)} judged queries, "
         f"{len(data.query_ids)} with text to search")
    got = retrieve(cfg, data)
    tag = got.model_label.replace(" ", "_")
    atomic_write(run_.path / RUN_FILE, write_trec_run(got.run, tag))
    t0 = time.perf_counter()
    how = dict(relevance_threshold=mc.relevance_threshold, ndcg_gain=mc.ndcg_gain, queries=mc.queries)
    metrics, per_query, mcounts = evaluate(data.qrels, got.run, **how)
    got.timings["evaluate_s"] = time.perf_counter() - t0
    got.timings["total_s"] = time.perf_counter() - t_start
    by_mode = {}
    for mode, r in got.other_runs.items():
        by_mode[mode] = evaluate(data.qrels, r, **how)[0]
        atomic_write(run_.path / f"run.{mode}.trec", write_trec_run(r, f"{tag}-{mode}"))
    if mcounts["queries_with_empty_run"]:
        _say(f"{mcounts['queries_with_empty_run']} evaluated queries have no document in the run; they score 0 on "
             "every metric")
    split = cfg.dataset.split if cfg.dataset.kind != "listwise" else None
    payload = results_payload(
        task="retrieval", model=got.model_label, model_fingerprint=got.fingerprint, dataset=cfg.dataset.label(),
        split=split, metrics=metrics, per_query=per_query, counts={**data.counts, **got.counts, **mcounts},
        timings=got.timings, representation=got.info, run_file=RUN_FILE, source=data.source,
        metric_settings={**how, "judgements_outside_corpus": mc.judgements_outside_corpus},
        **({"metrics_by_mode": by_mode} if by_mode else {}))
    write_results(run_.path, payload)
    write_report(run_.path, payload)
    run_.log_metrics({f"eval/{k}": v for k, v in metrics.items()})
    run_.mark_done({"nDCG@10": metrics["nDCG@10"], "queries": mcounts["queries"]})
    _say(f"nDCG@10 = {metrics['nDCG@10']:.4f}, Recall@100 = {metrics['Recall@100']:.4f} over "
         f"{mcounts['queries']} queries -> {run_.path}/results.json, report.md")
    return payload
