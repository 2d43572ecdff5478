"""``dataset.kind: listwise``: list-wise rows ``query_id, query, docs, grades`` (a documents/lists job's output
folder of Parquet shards, or one .parquet/.jsonl file; :mod:`workbench.store.list_rows`): the corpus is every
distinct document text of every row (id ``doc-<sha1[:16]>`` of the text), and query q's qrels are the grades of its
own row. The same text twice in one row keeps its higher grade (counted as ``duplicate_docs_in_row``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from workbench.errors import DataError
from workbench.store.list_rows import ROLES
from workbench_eval.formats.base import RetrievalData


def check(cfg) -> None:
    if not cfg.path:
        raise ValueError("dataset.kind: listwise needs dataset.path (a documents/lists output or a .parquet/.jsonl)")
    bad = set(cfg.column_map) - set(ROLES)
    if bad:
        raise ValueError(f"dataset.column_map has unknown role(s) {sorted(bad)}; roles are {list(ROLES)}")


def label(cfg) -> str:
    return str(cfg.path)


def load(cfg) -> RetrievalData:
    return _load_listwise(Path(cfg.path), cfg.column_map)


def _doc_id(text: str) -> str:
    return "doc-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _load_listwise(path: Path, column_map: dict[str, str]) -> RetrievalData:
    from workbench.store.list_rows import check_row, columns_for, read_records

    rows = read_records(path)
    if not rows:
        raise DataError(f"{path}: no rows")
    col = columns_for(rows, column_map, ROLES, path, "dataset.column_map")
    corpus: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    empty_docs = dup_in_row = 0
    for where, r in rows:
        row = check_row(where, r, col, integer_grades=True)
        if row.query_id in queries:
            raise DataError(f"{where}: duplicate query id {row.query_id!r} (field {col['query_id']!r}); ids must be "
                            "unique")
        if not row.docs:
            raise DataError(f"{where}: query {row.query_id!r} has no judged documents (field {col['docs']!r} is "
                            "empty)")
        judged: dict[str, int] = {}
        for d, g in zip(row.docs, row.grades):
            if not d.strip():
                empty_docs += 1
                continue
            did = _doc_id(d)
            corpus.setdefault(did, d)
            if did in judged:
                dup_in_row += 1
            judged[did] = max(int(g), judged.get(did, int(g)))  # one text twice in a row: keep its higher grade
        queries[row.query_id] = row.query
        qrels[row.query_id] = judged
    ids = list(corpus)
    return RetrievalData(ids, [corpus[d] for d in ids], list(queries), [queries[q] for q in queries],
                         {q: d for q, d in qrels.items() if d}, f"listwise:{path}",
                         {"rows": len(rows), "empty_docs_skipped": empty_docs, "duplicate_docs_in_row": dup_in_row,
                          "queries_all_docs_empty": sum(1 for d in qrels.values() if not d)})
