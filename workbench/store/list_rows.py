"""The list-wise row: one schema and one reader for every stage that writes or reads graded lists.

Row: ``query_id, query, docs, grades, provenance`` -- a query, its documents, one integer-or-real grade per document
(SyCL/TREC: 3 perfectly, 2 highly, 1 related, 0 irrelevant) and where each document came from (``synthetic:<model>``,
``real:positive``, ``real:bm25``, ``real:mined-...``). The documents job and the lists job write it; list-wise
training and the retrieval eval (``dataset.kind: listwise``) read it, through :func:`read_records` and
:func:`check_row`, with columns renamed from any names by a ``column_map`` of roles.

Sources :func:`read_records` accepts: a finished sharded job folder (``shard-*.parquet`` + ``manifest.json``; a run
folder holding exactly one of ``documents/`` or ``lists/`` stands for it), a ``.parquet`` or ``.jsonl`` file, a folder
of ``.parquet`` files, or a ``datasets.save_to_disk`` folder. Every record carries where it came from (file and row,
or file and line), so a bad field fails naming both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import DataError

COLUMNS = ("query_id", "query", "docs", "grades", "provenance")  # what the stages write
ROLES = ("query_id", "query", "docs", "grades")  # what readers need (query_id: only where a reader says so)


def schema():
    """The Parquet schema of a list-wise shard (also for a typed, empty shard)."""
    import pyarrow as pa

    return pa.schema([("query_id", pa.string()), ("query", pa.string()), ("docs", pa.list_(pa.string())),
                      ("grades", pa.list_(pa.int64())), ("provenance", pa.list_(pa.string()))])


@dataclass
class ListRow:
    query: str
    docs: list[str]
    grades: list[float]
    where: str = ""  # file and row, for messages
    query_id: str | None = None


def _job_folder(path: Path) -> Path:
    """A run folder holding one job output (documents/ or lists/) stands for that output."""
    if any(path.glob("shard-*.parquet")) or (path / "manifest.json").exists():
        return path
    subs = [path / n for n in ("documents", "lists") if (path / n).is_dir()]
    if len(subs) > 1:
        raise DataError(f"{path}: holds both documents/ and lists/; point the path at the one to use")
    return subs[0] if subs else path


def _parquet(files: list[Path]) -> list[tuple[str, dict]]:
    import pyarrow.parquet as pq

    out = []
    for f in files:
        try:
            rows = pq.read_table(f).to_pylist()
        except Exception as e:  # a corrupt or foreign file: the user's to fix
            raise DataError(f"{f}: not a readable Parquet file ({type(e).__name__}: {e})") from None
        out += [(f"{f} row {i}", r) for i, r in enumerate(rows)]
    return out


def read_records(path: str | Path, what: str = "list-wise data") -> list[tuple[str, dict]]:
    """``(where, record)`` for every row of the source, in order (see the module docstring for the sources)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: {what} not found")
    if path.is_file():
        if path.suffix == ".parquet":
            return _parquet([path])
        if path.suffix in (".jsonl", ".json"):
            from workbench.store.files import read_jsonl

            return [(f"{path}:{lineno}", rec) for lineno, rec in read_jsonl(path, "a JSON object with the list-wise "
                                                                                      "fields")]
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .parquet or .jsonl")
    folder = _job_folder(path)
    shards = sorted(folder.glob("shard-*.parquet"))
    if shards:
        from workbench.store.shards import require_complete

        require_complete(folder, what)
        return _parquet(shards)
    if (folder / "dataset_info.json").exists() and (folder / "state.json").exists():
        import datasets

        ds = datasets.load_from_disk(str(folder))
        if isinstance(ds, datasets.DatasetDict):
            raise DataError(f"{folder}: a DatasetDict ({list(ds)}); point the path at one split's folder")
        return [(f"{folder} row {i}", r) for i, r in enumerate(ds)]
    files = sorted(folder.glob("*.parquet"))
    if files:
        return _parquet(files)
    raise DataError(f"{folder}: no shard-*.parquet, *.parquet or saved dataset inside; point the path at the "
                    "documents/lists job output, a .parquet/.jsonl file, or a datasets.save_to_disk folder")


def columns_for(records: list[tuple[str, dict]], column_map: dict[str, str], roles: tuple[str, ...], source,
                map_key: str) -> dict[str, str]:
    """role -> column, checked against the columns present; the error names ``map_key`` (the recipe key to set)."""
    cols = {r: column_map.get(r, r) for r in roles}
    available = sorted({k for _, rec in records for k in rec})
    for role, col in cols.items():
        if col not in available:
            raise DataError(f"{source}: column {col!r} for role {role!r} not found. Available columns: {available}. "
                            f"Set {map_key}.{role} in the recipe.")
    return cols


def check_row(where: str, rec: dict, cols: dict[str, str], grade_range: tuple[float, float] | None = None,
              integer_grades: bool = False) -> ListRow:
    """One record as a :class:`ListRow`, every field checked (one error naming ``where`` and the field otherwise).

    Documents are kept as they are, empty ones included: what to do with them is the reader's rule.
    """
    missing = [f"{c!r} (role {role!r})" for role, c in cols.items() if c not in rec]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)}; fields present: {sorted(rec)}")
    qid = None
    if "query_id" in cols:
        qid = str(rec[cols["query_id"]]) if rec[cols["query_id"]] is not None else ""
        if not qid or any(c.isspace() for c in qid):
            raise DataError(f"{where}: field {cols['query_id']!r} is {qid!r}: ids must be non-empty, without spaces")
    q, docs, grades = rec[cols["query"]], rec[cols["docs"]], rec[cols["grades"]]
    if not isinstance(q, str) or not q.strip():
        raise DataError(f"{where}: field {cols['query']!r} (role 'query') is empty or not a string")
    if not isinstance(docs, (list, tuple)) or not all(isinstance(d, str) for d in docs):
        raise DataError(f"{where}: field {cols['docs']!r} (role 'docs') must be a list of strings")
    if not isinstance(grades, (list, tuple)) or len(grades) != len(docs):
        n = len(grades) if isinstance(grades, (list, tuple)) else "not a list"
        raise DataError(f"{where}: field {cols['grades']!r} (role 'grades') must be a list with one grade per "
                        f"document: {len(docs)} documents, grades: {n}")
    for j, g in enumerate(grades):
        if isinstance(g, bool) or not isinstance(g, (int, float)) or math.isnan(g):
            raise DataError(f"{where}: field {cols['grades']!r}[{j}] is {g!r}, not a number")
        if integer_grades and int(g) != g:
            raise DataError(f"{where}: field {cols['grades']!r}[{j}] = {g!r} is not an integer grade")
        if grade_range is not None and not grade_range[0] <= g <= grade_range[1]:
            raise DataError(f"{where}: field {cols['grades']!r}[{j}] = {g} is outside the grade scale "
                            f"[{grade_range[0]:g}, {grade_range[1]:g}]; fix the data or set the scale "
                            "(data.grade_min/grade_max)")
    return ListRow(q.strip(), list(docs), [float(g) for g in grades], where, qid)
