"""BEIR-format folders: ``corpus.jsonl {_id,title,text}``, ``queries.jsonl {_id,text}``, ``qrels/<split>.tsv``.

One reader for every stage (documents job, mining, the retrieval eval). Broken files fail with the file, the line
and the field; qrels entries whose query or document is missing are counted and reported, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from workbench.errors import DataError


def _jsonl(path: Path, required: tuple[str, ...]) -> dict[str, dict]:
    if not path.is_file():
        raise DataError(f"{path}: file not found (a BEIR folder holds corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    from workbench.data.jsonl import read_jsonl

    out: dict[str, dict] = {}
    for lineno, obj in read_jsonl(path):
        for f in required:
            if f not in obj:
                raise DataError(f"{path}:{lineno}: missing field {f!r} (expected fields: {list(required)})")
        _id = str(obj["_id"])
        if _id in out:
            raise DataError(f"{path}:{lineno}: duplicate _id {_id!r}; ids must be unique")
        out[_id] = obj
    if not out:
        raise DataError(f"{path}: empty file")
    return out


def load_corpus(folder: str | Path) -> dict[str, dict]:
    """doc_id -> {"title": str, "text": str}."""
    path = Path(folder) / "corpus.jsonl"
    raw = _jsonl(path, ("_id", "text"))
    return {k: {"title": str(v.get("title") or ""), "text": str(v["text"] or "")} for k, v in raw.items()}


def load_queries(folder: str | Path) -> dict[str, str]:
    path = Path(folder) / "queries.jsonl"
    return {k: str(v["text"]) for k, v in _jsonl(path, ("_id", "text")).items()}


def load_qrels(folder: str | Path, split: str) -> dict[str, dict[str, int]]:
    """query_id -> {doc_id: grade}. Requires the BEIR header ``query-id<TAB>corpus-id<TAB>score``."""
    path = Path(folder) / "qrels" / f"{split}.tsv"
    if not path.is_file():
        avail = sorted(p.stem for p in (Path(folder) / "qrels").glob("*.tsv"))
        raise DataError(f"{path}: qrels file not found; available splits: {avail or 'none'}")
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        if [h.strip().lower() for h in header] != ["query-id", "corpus-id", "score"]:
            raise DataError(f"{path}:1: expected the header 'query-id<TAB>corpus-id<TAB>score', got {header!r}. "
                            "Add that header line (BEIR format) and use tabs between the three columns.")
        for lineno, line in enumerate(fh, 2):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3:
                raise DataError(f"{path}:{lineno}: expected 3 tab-separated columns, got {len(parts)}")
            for name, value in (("query-id", parts[0]), ("corpus-id", parts[1])):
                if not value.strip():
                    raise DataError(f"{path}:{lineno}: field {name!r} is empty")
            try:
                grade = int(float(parts[2]))
            except ValueError:
                raise DataError(f"{path}:{lineno}: field 'score' must be an integer grade, got {parts[2]!r}") from None
            qrels.setdefault(parts[0], {})[parts[1]] = grade
    if not qrels:
        raise DataError(f"{path}: no judgements")
    return qrels


@dataclass
class BeirSplit:
    corpus: dict[str, dict]
    queries: dict[str, str]  # only the queries judged in this split (and present in queries.jsonl)
    qrels: dict[str, dict[str, int]]
    dropped: dict = field(default_factory=dict)  # counts of qrels entries that point at missing queries/docs


def load_split(folder: str | Path, split: str) -> BeirSplit:
    corpus, queries, qrels = load_corpus(folder), load_queries(folder), load_qrels(folder, split)
    missing_q = [q for q in qrels if q not in queries]
    missing_d = sum(1 for q, docs in qrels.items() for d in docs if d not in corpus)
    clean = {q: {d: g for d, g in docs.items() if d in corpus} for q, docs in qrels.items() if q in queries}
    clean = {q: docs for q, docs in clean.items() if docs}
    return BeirSplit(corpus, {q: queries[q] for q in clean}, clean,
                     {"qrels_missing_query": len(missing_q), "qrels_missing_doc": missing_d})


def doc_text(doc: dict) -> str:
    return f"{doc['title']} {doc['text']}".strip() if doc.get("title") else doc["text"]
