"""``dataset.kind: beir``: a BEIR-format folder (``workbench.store.beir``: corpus.jsonl, queries.jsonl,
qrels/<split>.tsv), read with its qrels as given."""

from __future__ import annotations

from pathlib import Path

from workbench.errors import DataError
from workbench_eval.formats.base import RetrievalData


def check(cfg) -> None:
    if not cfg.path:
        raise ValueError("dataset.kind: beir needs dataset.path (a BEIR folder)")


def label(cfg) -> str:
    return str(cfg.path)


def load(cfg) -> RetrievalData:
    return load_folder(Path(cfg.path), cfg.split)


def load_folder(folder: Path, split: str) -> RetrievalData:
    from workbench.store.beir import doc_text, load_corpus, load_qrels, load_queries

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
