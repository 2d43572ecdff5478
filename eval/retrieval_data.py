"""What a retrieval eval runs on: a corpus, judged queries and graded qrels, from one of three sources.

* ``beir``: a BEIR-format folder (``workbench.data.beir``: corpus.jsonl, queries.jsonl, qrels/<split>.tsv);
* ``hub``: a BEIR data set by name (``BeIR/<name>`` on the Hugging Face hub, via ``datasets``), downloaded once into
  ``$WORKBENCH_HOME/data/beir/<name>`` as a BEIR folder and read from there; offline it fails, saying so;
* ``listwise``: list-wise rows ``query_id, query, docs, grades`` (the documents job's output folder of Parquet
  shards, or one .parquet/.jsonl file): the corpus is every distinct document text of every row (id
  ``doc-<sha1[:16]>`` of the text), and query q's qrels are the grades of its own row.

The qrels reach the metrics as given (see :mod:`eval.metrics`): judgements that name documents missing from the
corpus stay (counted, and reported on one stderr line) unless ``metrics.judgements_outside_corpus: drop``, and
judged queries without text in queries.jsonl stay too (the run cannot have them, so they score 0, as under
``trec_eval -c``). The queries searched are the judged queries that have text. If no judgement at or above the
relevance threshold names a document of the corpus, every metric would be 0.0: the eval stops with an error
instead (almost always qrels doc ids that do not match the corpus ``_id`` s).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from workbench.errors import DataError

LISTWISE_ROLES = ("query_id", "query", "docs", "grades")


@dataclass
class DatasetConfig:
    kind: Literal["beir", "hub", "listwise"] = "beir"
    path: str | None = None  # beir: the folder; listwise: a shard folder or a .parquet/.jsonl file
    name: str | None = None  # hub: BEIR data set name, e.g. scifact (downloads BeIR/<name>)
    split: str = "test"  # beir/hub: the qrels split
    column_map: dict[str, str] = field(default_factory=dict)  # listwise roles -> columns: query_id, query, docs, grades

    def validate(self):
        if self.kind in ("beir", "listwise") and not self.path:
            raise ValueError(f"dataset.kind: {self.kind} needs dataset.path")
        if self.kind == "hub" and not self.name:
            raise ValueError("dataset.kind: hub needs dataset.name (a BEIR data set, e.g. scifact)")
        bad = set(self.column_map) - set(LISTWISE_ROLES)
        if bad:
            raise ValueError(f"dataset.column_map has unknown role(s) {sorted(bad)}; roles are {list(LISTWISE_ROLES)}")

    def label(self) -> str:
        return self.name if self.kind == "hub" else str(self.path)


@dataclass
class RetrievalData:
    corpus_ids: list[str]
    corpus_texts: list[str]
    query_ids: list[str]  # the judged queries that have text: the ones searched
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]  # as given (see the module docstring): what the metrics read
    source: str
    counts: dict = field(default_factory=dict)


def load_data(cfg: DatasetConfig, relevance_threshold: int = 1,
              judgements_outside_corpus: Literal["keep", "drop"] = "keep") -> RetrievalData:
    """The collection, its judged queries and its qrels (``relevance_threshold`` only serves the sanity check that
    some relevant judgement names a corpus document; ``judgements_outside_corpus`` is ``metrics.*`` of the recipe)."""
    if cfg.kind == "listwise":
        data = _load_listwise(Path(cfg.path), cfg.column_map)
    else:
        folder = Path(cfg.path) if cfg.kind == "beir" else download_beir(cfg.name, cfg.split)
        data = _load_beir(folder, cfg.split)
    return _finish(data, relevance_threshold, judgements_outside_corpus)


# ----------------------------------------------------------------------------------------------- BEIR


def _load_beir(folder: Path, split: str) -> RetrievalData:
    from workbench.data.beir import doc_text, load_corpus, load_qrels, load_queries

    if not folder.is_dir():
        raise DataError(f"{folder}: BEIR folder not found (dataset.path); it must hold corpus.jsonl, queries.jsonl "
                        "and qrels/<split>.tsv")
    # Not load_split: that view drops judgements on missing documents, which the metrics must keep.
    corpus, queries, qrels = load_corpus(folder), load_queries(folder), load_qrels(folder, split)
    for what, ids, file in (("doc", corpus, "corpus.jsonl"), ("query", queries, "queries.jsonl")):
        bad = next((i for i in ids if not i or any(c.isspace() for c in i)), None)
        if bad is not None:
            raise DataError(f"{folder / file}: {what} _id {bad!r} is empty or holds whitespace; TREC run files "
                            "cannot carry it. Use ids without spaces.")
    qids = [q for q in qrels if q in queries]  # judged queries with text, in qrels order
    ids = list(corpus)
    return RetrievalData(ids, [doc_text(corpus[d]) for d in ids], qids, [queries[q] for q in qids], qrels,
                         f"beir:{folder}:{split}", {"qrels_file": str(folder / "qrels" / f"{split}.tsv")})


def download_beir(name: str, split: str) -> Path:
    """``BeIR/<name>`` (corpus, queries) and ``BeIR/<name>-qrels`` (split) from the hub, once, as a BEIR folder."""
    from workbench.models import workbench_home

    target = workbench_home() / "data" / "beir" / name
    qrels_file = target / "qrels" / f"{split}.tsv"
    if (target / ".complete").is_file() and qrels_file.is_file():
        return target
    offline = any(os.environ.get(v, "0").lower() in ("1", "true", "yes")
                  for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if offline:
        raise DataError(f"dataset.name={name}: BeIR/{name} is not downloaded yet ({target}) and this machine is "
                        "offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set). Download it where there is internet, or "
                        "put a BEIR folder on disk and use dataset.kind=beir dataset.path=<folder>.")
    import datasets

    def fetch(repo, config, split_name):
        try:
            return datasets.load_dataset(repo, config, split=split_name)
        except Exception as e:  # network errors, missing repo/split: all the user's to fix
            raise DataError(f"dataset.name={name}: could not download {repo} ({config or split_name}) from the "
                            f"Hugging Face hub: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
                            "Check the name (BEIR data sets: scifact, nfcorpus, fiqa, ...) and the network, or use "
                            "dataset.kind=beir with a local folder.") from None

    target.parent.mkdir(parents=True, exist_ok=True)
    if not (target / ".complete").is_file():
        corpus, queries = fetch(f"BeIR/{name}", "corpus", "corpus"), fetch(f"BeIR/{name}", "queries", "queries")
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            with open(tmp / "corpus.jsonl", "w", encoding="utf-8") as fh:
                for r in corpus:
                    row = {"_id": str(r["_id"]), "title": r.get("title") or "", "text": r["text"]}
                    fh.write(json.dumps(row) + "\n")
            with open(tmp / "queries.jsonl", "w", encoding="utf-8") as fh:
                for r in queries:
                    fh.write(json.dumps({"_id": str(r["_id"]), "text": r["text"]}) + "\n")
            (tmp / "qrels").mkdir()
            (tmp / ".complete").write_text(f"BeIR/{name}\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    qrels = fetch(f"BeIR/{name}-qrels", None, split)
    lines = ["query-id\tcorpus-id\tscore"] + [f"{r['query-id']}\t{r['corpus-id']}\t{int(r['score'])}" for r in qrels]
    from workbench.runs import atomic_write

    atomic_write(qrels_file, "\n".join(lines) + "\n")
    print(f"[eval] downloaded BeIR/{name} ({split}) into {target}", file=sys.stderr)
    return target


# ----------------------------------------------------------------------------------------------- list-wise rows


def _listwise_rows(path: Path) -> list[tuple[str, dict]]:
    """(where, row) pairs; ``where`` names the file and row/line for error messages."""
    if path.is_dir():
        files = sorted(path.glob("shard-*.parquet"))
        if not files:
            raise DataError(f"{path}: no shard-*.parquet files; dataset.path must be a list-wise output folder "
                            "(e.g. runs/<name>/documents) or a .parquet/.jsonl file")
        from workbench.generation.shards import require_complete

        require_complete(path, "list-wise")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"{path}: list-wise file or folder not found (dataset.path)")
    out = []
    for f in files:
        if f.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                rows = pq.read_table(f).to_pylist()
            except Exception as e:
                raise DataError(f"{f}: not a readable Parquet file ({type(e).__name__}: {e})") from None
            out += [(f"{f} row {i}", r) for i, r in enumerate(rows)]
        elif f.suffix in (".jsonl", ".json"):
            from workbench.data.jsonl import read_jsonl

            out += [(f"{f}:{lineno}", r) for lineno, r in read_jsonl(f)]
        else:
            raise DataError(f"{f}: unsupported list-wise file type {f.suffix!r}; use .parquet or .jsonl")
    if not out:
        raise DataError(f"{path}: no rows")
    return out


def _doc_id(text: str) -> str:
    return "doc-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _load_listwise(path: Path, column_map: dict[str, str]) -> RetrievalData:
    col = {role: column_map.get(role, role) for role in LISTWISE_ROLES}
    rows = _listwise_rows(path)
    corpus: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    empty_docs = dup_in_row = 0
    for where, r in rows:
        missing = [f"{c!r} (role {role!r})" for role, c in col.items() if c not in r]
        if missing:
            raise DataError(f"{where}: missing column(s) {', '.join(missing)}; columns present: {sorted(r)}. "
                            "Set dataset.column_map.<role> to the right column.")
        qid, query, docs, grades = (r[col[k]] for k in LISTWISE_ROLES)
        qid = str(qid)
        if not qid or any(c.isspace() for c in qid):
            raise DataError(f"{where}: field {col['query_id']!r} is {qid!r}: ids must be non-empty, without spaces")
        if qid in queries:
            raise DataError(f"{where}: duplicate query id {qid!r} (field {col['query_id']!r}); ids must be unique")
        if not isinstance(query, str) or not query.strip():
            raise DataError(f"{where}: field {col['query']!r} (role 'query') is empty or not a string")
        if not isinstance(docs, list) or not isinstance(grades, list):
            raise DataError(f"{where}: fields {col['docs']!r} and {col['grades']!r} must be lists")
        if len(docs) != len(grades):
            raise DataError(f"{where}: {len(docs)} docs but {len(grades)} grades (fields {col['docs']!r}, "
                            f"{col['grades']!r}); each document needs one grade")
        if not docs:
            raise DataError(f"{where}: query {qid!r} has no judged documents (field {col['docs']!r} is empty)")
        judged: dict[str, int] = {}
        for j, (d, g) in enumerate(zip(docs, grades)):
            if not isinstance(d, str):
                raise DataError(f"{where}: {col['docs']}[{j}] is {type(d).__name__}, expected a string")
            if isinstance(g, bool) or not isinstance(g, (int, float)) or int(g) != g:
                raise DataError(f"{where}: {col['grades']}[{j}] = {g!r} is not an integer grade")
            if not d.strip():
                empty_docs += 1
                continue
            did = _doc_id(d)
            corpus.setdefault(did, d)
            if did in judged:
                dup_in_row += 1
            judged[did] = max(int(g), judged.get(did, int(g)))  # one text twice in a row: keep its higher grade
        queries[qid] = query.strip()
        qrels[qid] = judged
    ids = list(corpus)
    return RetrievalData(ids, [corpus[d] for d in ids], list(queries), [queries[q] for q in queries],
                         {q: d for q, d in qrels.items() if d}, f"listwise:{path}",
                         {"rows": len(rows), "empty_docs_skipped": empty_docs, "duplicate_docs_in_row": dup_in_row,
                          "queries_all_docs_empty": sum(1 for d in qrels.values() if not d)})


# ----------------------------------------------------------------------------------------------- common checks


def _finish(data: RetrievalData, threshold: int, outside_corpus: str) -> RetrievalData:
    if not data.corpus_ids:
        raise DataError(f"{data.source}: the corpus is empty; nothing to retrieve")
    where = data.counts.pop("qrels_file", data.source)
    in_corpus = set(data.corpus_ids)
    searched = set(data.query_ids)
    outside = [(q, d, g) for q, docs in data.qrels.items() for d, g in docs.items() if d not in in_corpus]
    no_text = [q for q in data.qrels if q not in searched]
    qrels = data.qrels
    if outside:
        n_rel = sum(1 for _, _, g in outside if g >= threshold)
        if outside_corpus == "drop":
            qrels = {q: {d: g for d, g in docs.items() if d in in_corpus} for q, docs in qrels.items()}
            qrels = {q: docs for q, docs in qrels.items() if docs}
            fate = "they are LEFT OUT (metrics.judgements_outside_corpus: drop; not trec_eval on the file as given)"
        else:
            fate = "they stay in the qrels (they count in recall and the ideal DCG, as in trec_eval)"
        print(f"[eval] {where}: {len(outside)} judgements ({n_rel} at grade >= {threshold}) name documents that are "
              f"not in the corpus; {fate}", file=sys.stderr)
    if no_text:
        print(f"[eval] {where}: {len(no_text)} judged queries (e.g. {no_text[0]!r}) have no text in queries.jsonl; "
              "they cannot be searched and score 0 (as trec_eval -c scores a query missing from the run)",
              file=sys.stderr)
    if not any(g >= threshold and d in in_corpus for docs in qrels.values() for d, g in docs.items()):
        raise DataError(f"{data.source}: no query has a relevant (grade >= {threshold}) judgement on a document in "
                        f"the corpus ({len(qrels)} queries judged); every metric would be 0.0. Check the qrels split "
                        "and that its doc ids match the corpus _ids.")
    qids = [q for q in data.query_ids if q in qrels]
    texts = dict(zip(data.query_ids, data.query_texts))
    counts = {"docs": len(data.corpus_ids), "queries_judged": len(qrels), "queries_searched": len(qids),
              "empty_docs": sum(1 for t in data.corpus_texts if not t.strip()),
              "judgements": sum(len(d) for d in data.qrels.values()), "qrels_missing_doc": len(outside),
              "qrels_missing_query": len(no_text), **data.counts}
    return RetrievalData(data.corpus_ids, data.corpus_texts, qids, [texts[q] for q in qids], qrels, data.source,
                         counts)
