"""BEIR-format folders: ``corpus.jsonl {_id,title,text}``, ``queries.jsonl {_id,text}``, ``qrels/<split>.tsv``.

One reader for every stage (documents job, mining, the retrieval eval). Broken files fail with the file, the line
and the field. :func:`load_qrels` returns the judgements as given; :func:`load_split` restricts them to the queries
and documents that exist (for the stages that need text), counting what it leaves out.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from workbench.store.files import read_lines
from workbench.errors import DataError


def _jsonl(path: Path, required: tuple[str, ...]) -> dict[str, dict]:
    if not path.is_file():
        raise DataError(f"{path}: file not found (a BEIR folder holds corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    from workbench.store.files import read_jsonl

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
    """query_id -> {doc_id: grade}, every line of the file as given (documents or queries missing from the corpus
    or queries.jsonl included: :func:`load_split` is the view restricted to them). Requires the BEIR header
    ``query-id<TAB>corpus-id<TAB>score``.

    A (query, doc) pair judged twice with different grades is an error naming both lines (which grade is right is
    the user's call; trec_eval and pytrec_eval would silently keep one). The same pair judged twice with the same
    grade is harmless: one is kept and the repeats are reported on one stderr line.
    """
    path = Path(folder) / "qrels" / f"{split}.tsv"
    if not path.is_file():
        avail = sorted(p.stem for p in (Path(folder) / "qrels").glob("*.tsv"))
        raise DataError(f"{path}: qrels file not found; available splits: {avail or 'none'}")
    qrels: dict[str, dict[str, int]] = {}
    first_line: dict[tuple[str, str], int] = {}  # (query, doc) -> the line that judged it first
    repeats: list[tuple[int, int]] = []  # (line, earlier identical line)
    lines = read_lines(path)
    _, first = next(lines, (1, ""))
    header = first.split("\t")
    if [h.strip().lower() for h in header] != ["query-id", "corpus-id", "score"]:
        raise DataError(f"{path}:1: expected the header 'query-id<TAB>corpus-id<TAB>score', got {header!r}. "
                        "Add that header line (BEIR format) and use tabs between the three columns.")
    for lineno, line in lines:
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise DataError(f"{path}:{lineno}: expected 3 tab-separated columns, got {len(parts)}")
        for name, value in (("query-id", parts[0]), ("corpus-id", parts[1])):
            if not value.strip():
                raise DataError(f"{path}:{lineno}: field {name!r} is empty")
        try:
            value = float(parts[2])
        except ValueError:
            value = None
        if value is None or not value.is_integer():  # 1.5 is not a grade: never truncate it silently
            raise DataError(f"{path}:{lineno}: field 'score' must be an integer grade, got {parts[2]!r}")
        q, d, grade = parts[0], parts[1], int(value)
        docs = qrels.setdefault(q, {})
        if d in docs:
            earlier = first_line[(q, d)]
            if docs[d] != grade:
                raise DataError(f"{path}:{lineno}: query {q!r} doc {d!r} has grade {grade} here but grade "
                                f"{docs[d]} at {path}:{earlier}; judge each (query, doc) pair once: delete the "
                                "wrong line")
            repeats.append((lineno, earlier))
            continue
        docs[d] = grade
        first_line[(q, d)] = lineno
    if not qrels:
        raise DataError(f"{path}: no judgements")
    if repeats:
        line, earlier = repeats[0]
        print(f"[data] {path}: {len(repeats)} duplicate judgement line(s) repeat an earlier line with the same grade "
              f"(first: line {line} = line {earlier}); one of each is kept", file=sys.stderr)
    return qrels


@dataclass
class BeirSplit:
    corpus: dict[str, dict]
    queries: dict[str, str]  # only the queries judged in this split (and present in queries.jsonl)
    qrels: dict[str, dict[str, int]]
    dropped: dict = field(default_factory=dict)  # counts of qrels entries that point at missing queries/docs


def load_split(folder: str | Path, split: str) -> BeirSplit:
    """The split restricted to what the corpus and queries.jsonl hold: the view the documents job and mining need
    (they can only use documents that have text). The retrieval eval does NOT use it: metrics must see the qrels as
    given (a relevant document missing from the corpus still counts in recall and the ideal DCG), so
    :mod:`workbench_eval.retrieval_data` reads :func:`load_qrels` itself."""
    corpus, queries, qrels = load_corpus(folder), load_queries(folder), load_qrels(folder, split)
    missing_q = [q for q in qrels if q not in queries]
    missing_d = sum(1 for q, docs in qrels.items() for d in docs if d not in corpus)
    clean = {q: {d: g for d, g in docs.items() if d in corpus} for q, docs in qrels.items() if q in queries}
    clean = {q: docs for q, docs in clean.items() if docs}
    return BeirSplit(corpus, {q: queries[q] for q in clean}, clean,
                     {"qrels_missing_query": len(missing_q), "qrels_missing_doc": missing_d})


def doc_text(doc: dict) -> str:
    return f"{doc['title']} {doc['text']}".strip() if doc.get("title") else doc["text"]
