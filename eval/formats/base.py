"""What every retrieval dataset format returns: the corpus, the judged queries and the qrels."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RetrievalData:
    corpus_ids: list[str]
    corpus_texts: list[str]
    query_ids: list[str]  # the judged queries that have text: the ones searched
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]  # as given (see the module docstring): what the metrics read
    source: str
    counts: dict = field(default_factory=dict)
