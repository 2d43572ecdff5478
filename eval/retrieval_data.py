"""What a retrieval eval runs on: a corpus, judged queries and graded qrels, from a format of :mod:`.formats`.

* ``beir``: a BEIR-format folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv);
* ``hub``: a BEIR data set by name (``BeIR/<name>`` on the Hugging Face hub), downloaded once as a BEIR folder;
* ``listwise``: list-wise rows ``query_id, query, docs, grades``: every distinct document text is the corpus, and a
  row's grades are its query's qrels.

The qrels reach the metrics as given (see :mod:`workbench_eval.metrics`): judgements that name documents missing from the
corpus stay (counted, and reported on one stderr line) unless ``metrics.judgements_outside_corpus: drop``, and
judged queries without text in queries.jsonl stay too (the run cannot have them, so they score 0, as under
``trec_eval -c``). The queries searched are the judged queries that have text. If no judgement at or above the
relevance threshold names a document of the corpus, every metric would be 0.0: the eval stops with an error
instead (almost always qrels doc ids that do not match the corpus ``_id`` s).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Literal

from workbench.errors import DataError
from workbench_eval import formats
from workbench_eval.formats.base import RetrievalData  # noqa: F401  (re-exported: what load_data returns)



@dataclass
class DatasetConfig:
    kind: Literal[formats.NAMES] = "beir"  # type: ignore[valid-type]  (a module of workbench_eval.formats)
    path: str | None = None  # beir: the folder; listwise: a shard folder or a .parquet/.jsonl file
    name: str | None = None  # hub: BEIR data set name, e.g. scifact (downloads BeIR/<name>)
    split: str = "test"  # beir/hub: the qrels split
    column_map: dict[str, str] = field(default_factory=dict)  # listwise roles -> columns: query_id, query, docs, grades

    def validate(self):
        formats.get(self.kind).check(self)

    def label(self) -> str:
        return formats.get(self.kind).label(self)


def load_data(cfg: DatasetConfig, relevance_threshold: int = 1,
              judgements_outside_corpus: Literal["keep", "drop"] = "keep") -> RetrievalData:
    """The collection, its judged queries and its qrels (``relevance_threshold`` only serves the sanity check that
    some relevant judgement names a corpus document; ``judgements_outside_corpus`` is ``metrics.*`` of the recipe)."""
    return _finish(formats.get(cfg.kind).load(cfg), relevance_threshold, judgements_outside_corpus)


# -----------------------------------------------------------------------------------------------


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
