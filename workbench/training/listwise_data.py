"""List-wise training data: ``(query, docs, grades)`` rows -- loading, validation, splitting, and batch collation.

Sources (``data.path``), all read through the roles ``query``, ``docs`` (list of texts), ``grades`` (list of numbers,
one per document), renamed from any column names with ``data.column_map``:

* a finished sharded job folder (``shard-*.parquet`` + ``manifest.json``): the ``documents`` job's
  ``<run>/documents`` or the ``lists`` job's ``<run>/lists``; a run folder holding exactly one of those works too;
* a ``.parquet`` file, a ``.jsonl`` file, or a folder of ``.parquet`` files;
* a ``datasets`` folder written by ``Dataset.save_to_disk``.

Rules, stated once: a grade outside ``[grade_min, grade_max]`` (default 0-3), a grades list whose length differs from
the docs list, or a missing/empty query fails with the file, the row and the field. Empty documents (a generator
can write one) are dropped and counted; a row left with no document is dropped and counted.

Collation (:class:`ListwiseDataCollator`): lists of different lengths in one batch are flattened -- only real
documents are tokenised and encoded -- and the grades go to the loss as a (B, K) tensor padded with NaN, from which
:func:`workbench.losses.listwise.base.in_batch_layout` rebuilds the padded, masked layout.
"""

from __future__ import annotations

import hashlib
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from workbench.errors import DataError

from workbench.store.list_rows import ListRow, check_row, columns_for, read_records

ROLES = ("query", "docs", "grades")  # the list-wise row's roles training reads (workbench.store.list_rows)


@dataclass
class ListwiseDataConfig:
    path: str = ""  # see the module docstring for what it may point at
    column_map: dict[str, str] = field(default_factory=dict)  # role -> column; roles: query, docs, grades
    grade_min: float = 0.0
    grade_max: float = 3.0
    relevant_min_grade: float = 2.0  # the binary view (infonce baseline, nDCG@10's relevant set): grade >= this
    max_docs: int | None = None  # cap each list (keeps a top-graded document, samples the rest with the seed)
    size: int | None = None  # use the first `size` rows (after `offset`)
    offset: int = 0

    def validate(self):
        if not self.path:
            raise ValueError("path is required: a documents/lists job folder, a .parquet/.jsonl file, or a dataset")
        bad = set(self.column_map) - set(ROLES)
        if bad:
            raise ValueError(f"column_map has unknown role(s) {sorted(bad)}; roles are {', '.join(ROLES)}")
        if not self.grade_min < self.grade_max:
            raise ValueError(f"grade_min ({self.grade_min}) must be below grade_max ({self.grade_max})")
        if not self.grade_min <= self.relevant_min_grade <= self.grade_max:
            raise ValueError(f"relevant_min_grade ({self.relevant_min_grade:g}) must lie on the grade scale "
                             f"[{self.grade_min:g}, {self.grade_max:g}]")
        if self.max_docs is not None and self.max_docs < 1:
            raise ValueError("max_docs must be >= 1 (or null for no cap)")


def load_lists(cfg: ListwiseDataConfig, seed: int = 0, quiet: bool = False) -> list[ListRow]:
    """Read, validate and (optionally) cap the list-wise rows of ``cfg.path``."""
    path = Path(cfg.path)
    records = read_records(path)
    if not records:
        raise DataError(f"{path}: no rows")
    cols = columns_for(records, cfg.column_map, ROLES, path, "data.column_map")
    end = None if cfg.size is None else cfg.offset + cfg.size
    counts = {"empty_docs": 0, "rows_without_docs": 0}
    rows = []
    for where, rec in records[cfg.offset:end]:
        row = check_row(where, rec, cols, (cfg.grade_min, cfg.grade_max))
        keep = [j for j, d in enumerate(row.docs) if d.strip()]  # a generator can write an empty document
        counts["empty_docs"] += len(row.docs) - len(keep)
        if not keep:
            counts["rows_without_docs"] += 1
            continue
        rows.append(ListRow(row.query, [row.docs[j] for j in keep], [row.grades[j] for j in keep], where))
    if counts["empty_docs"] or counts["rows_without_docs"]:
        if not quiet:
            print(f"[listwise data] {path}: dropped {counts['empty_docs']} empty documents and "
                  f"{counts['rows_without_docs']} rows left with none", file=sys.stderr)
    if not rows:
        raise DataError(f"{path}: no usable rows (every list was empty)")
    if cfg.max_docs is not None:
        rows = [cap_docs(r, cfg.max_docs, random.Random(f"{seed}:{i}")) for i, r in enumerate(rows)]
    return rows


def cap_docs(row: ListRow, max_docs: int, rng: random.Random) -> ListRow:
    """At most ``max_docs`` documents: the first top-graded one always stays (the list keeps its best positive),
    the others are sampled uniformly; the original order is kept."""
    n = len(row.docs)
    if n <= max_docs:
        return row
    top = max(range(n), key=lambda j: (row.grades[j], -j))
    rest = sorted(rng.sample([j for j in range(n) if j != top], max_docs - 1))
    keep = sorted([top] + rest)
    return ListRow(row.query, [row.docs[j] for j in keep], [row.grades[j] for j in keep], row.where)


def holdout_split(rows: list[ListRow], fraction: float, seed: int = 0) -> tuple[list[ListRow], list[ListRow]]:
    """Hold out ``fraction`` of the distinct queries (at least one), chosen by a seeded hash of the query text, so
    rows sharing a query never straddle the split."""
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    queries = sorted({r.query for r in rows}, key=lambda q: hashlib.sha256(f"{seed}:{q}".encode()).hexdigest())
    if len(queries) < 2:
        raise DataError("cannot hold out queries for evaluation: the data has a single distinct query; "
                        "set eval.path to separate evaluation data, or eval: null")
    n_hold = min(len(queries) - 1, max(1, round(fraction * len(queries))))
    held = set(queries[:n_hold])
    return [r for r in rows if r.query not in held], [r for r in rows if r.query in held]


# ----------------------------------------------------------------------------------------------- datasets


def to_dataset(rows: list[ListRow]):
    """A ``datasets.Dataset`` with columns query, docs, grades (the collator's input)."""
    import datasets

    return datasets.Dataset.from_dict({"query": [r.query for r in rows], "docs": [r.docs for r in rows],
                                       "grades": [r.grades for r in rows]})


def infonce_columns(rows: list[ListRow], relevant_min_grade: float, num_negatives: int) -> tuple[dict, int]:
    """The binary baseline's view of graded lists: (query, positive, negative_1..n) columns for
    ``MultipleNegativesRankingLoss``, as SyCL's binary baselines binarise graded data (grade >= threshold is
    relevant). Positive: the first top-graded document if it reaches ``relevant_min_grade``; negatives: the
    documents below the threshold, hardest (highest grade) first. Rows lacking either are dropped; returns
    (columns, number dropped)."""
    cols: dict[str, list[str]] = {"query": [], "positive": []}
    cols.update({f"negative_{k + 1}": [] for k in range(num_negatives)})
    dropped = 0
    for r in rows:
        order = sorted(range(len(r.docs)), key=lambda j: (-r.grades[j], j))
        pos = order[0]
        negs = [j for j in order if r.grades[j] < relevant_min_grade][:num_negatives]
        if r.grades[pos] < relevant_min_grade or len(negs) < num_negatives:
            dropped += 1
            continue
        cols["query"].append(r.query)
        cols["positive"].append(r.docs[pos])
        for k, j in enumerate(negs):
            cols[f"negative_{k + 1}"].append(r.docs[j])
    return cols, dropped


def ir_eval_inputs(rows: list[ListRow], relevant_min_grade: float
                   ) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    """Queries, corpus and relevant documents for ``InformationRetrievalEvaluator`` from held-out lists: the corpus
    is every held-out document (other queries' documents are distractors), relevant = grade >= the threshold.
    Identical texts share one id (their relevance is the union)."""
    queries, corpus, relevant = {}, {}, {}
    doc_ids: dict[str, str] = {}
    query_ids: dict[str, str] = {}
    for r in rows:
        qid = query_ids.setdefault(r.query, f"q{len(query_ids)}")
        queries[qid] = r.query
        for d, g in zip(r.docs, r.grades):
            did = doc_ids.setdefault(d, f"d{len(doc_ids)}")
            corpus[did] = d
            if g >= relevant_min_grade:
                relevant.setdefault(qid, set()).add(did)
    return queries, corpus, relevant


# ----------------------------------------------------------------------------------------------- collation


@dataclass
class ListwiseDataCollator:
    """Collates (query, docs, grades) rows for the list-wise losses under ``SentenceTransformerTrainer``.

    Output: ``query_*`` (the B queries, tokenised), ``docs_*`` (the M real documents of the batch, query 0's first,
    tokenised) and ``label``: (B, K) float grades, NaN where a list is shorter than the batch's longest (K).
    The trainer hands the loss ``[query_features, docs_features]`` and ``label``.

    It follows sentence-transformers' collator interface (``preprocess_fn`` is ``model.preprocess``; ``prompts``: a
    string for both columns or a dict keyed by ``query``/``docs``; ``valid_label_columns`` for the batch sampler)
    without subclassing it, so that importing this module stays free of torch and sentence-transformers.
    """

    preprocess_fn: Callable
    prompts: str | dict[str, str] | None = None
    max_length: int | None = None
    valid_label_columns: list[str] = field(default_factory=lambda: ["grades"])

    def prompt_for(self, column: str) -> str | None:
        if isinstance(self.prompts, str):
            return self.prompts
        return (self.prompts or {}).get(column)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if not features:
            return {}
        missing = [c for c in ROLES if c not in features[0]]
        if missing:
            raise ValueError(f"ListwiseDataCollator needs columns {list(ROLES)}; missing {missing}")
        B, K = len(features), max(len(f["docs"]) for f in features)
        grades = torch.full((B, K), float("nan"))  # (B, K)
        for i, f in enumerate(features):
            if len(f["grades"]) != len(f["docs"]) or not f["docs"]:
                raise ValueError(f"row {i} of the batch: {len(f['docs'])} docs but {len(f['grades'])} grades")
            grades[i, :len(f["grades"])] = torch.tensor(f["grades"], dtype=torch.float)
        batch: dict[str, Any] = {"label": grades}
        texts = {"query": [f["query"] for f in features], "docs": [d for f in features for d in f["docs"]]}
        kwargs = {"max_length": self.max_length} if self.max_length is not None else {}
        for column, inputs in texts.items():
            for key, value in self.preprocess_fn(inputs, prompt=self.prompt_for(column), task=None, **kwargs).items():
                batch[f"{column}_{key}"] = value
        return batch
