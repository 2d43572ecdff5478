"""Retrieval metrics through pytrec_eval (the trec_eval C code), never a re-implementation.

By default the numbers equal ``trec_eval -c -l <relevance_threshold> -m <measure>`` on the qrels file as given and
the run as written (``run.trec``): every query of the qrels is in the mean, a query the run has no document for
scores 0 (that is trec_eval's ``-c``), and judgements that name documents missing from the corpus stay in the
qrels (a relevant document the system could never retrieve still counts against recall and in the ideal DCG).

Reported measures and the trec_eval measure behind each:

=============  ====================  ===================================================================
name           trec_eval measure     note
=============  ====================  ===================================================================
nDCG@k         ``ndcg_cut.k``        k in 1, 3, 5, 10, 100; graded: gain = the grade (linear, as trec_eval
                                     and BEIR), or 2^grade - 1 with ``ndcg_gain: exponential``
Recall@k       ``recall.k``          k in 10, 100; binary: relevant = grade >= ``relevance_threshold``
MAP@100        ``map_cut.100``       binary
P@10           ``P.10``              binary
MRR@10         ``recip_rank``        binary; on the run cut to its first 10 documents (:func:`cut_run`)
MRR            ``recip_rank``        binary; on the whole run (``search.top_k`` documents), no cut
=============  ====================  ===================================================================

``relevance_threshold`` is trec_eval's ``-l`` (pytrec_eval's ``relevance_level``): the lowest grade the binary
measures count as relevant. 1 by default; TREC Deep Learning counts grade >= 2 (its grade 1 means "related").
nDCG never uses it: it reads the grades themselves.

Exponential gain (Burges et al. 2005, "Learning to rank using gradient descent"): ``DCG = sum_i (2^g_i - 1) /
log2(i + 1)``. trec_eval's ``ndcg_cut`` takes the gain to be the grade, so we hand its nDCG evaluator (only that one)
the qrels with every positive grade g replaced by the integer ``2^g - 1`` (grades <= 0 unchanged: trec_eval gives
them no gain either way); ideal and actual DCG then both use the exponential gain.

Which queries enter the mean (``queries``):

* ``qrels`` (default): every query of the qrels, as ``trec_eval -c``; a query the run misses (the system returned
  nothing, or queries.jsonl has no text for it) scores 0 on every measure, and a query without a relevant judgement
  scores 0 on the binary measures;
* ``with_relevant``: only queries with at least one judgement >= ``relevance_threshold`` (what this eval did before:
  it leaves out queries that can only score 0 on the binary measures; their nDCG can still be > 0);
* ``run``: only queries the run has at least one document for, as ``trec_eval`` without ``-c`` and as the mean of
  pytrec_eval's output dict (BEIR's ``EvaluateRetrieval.evaluate``).

trec_eval ignores the rank column of a run: it orders each query's documents by score, descending, and breaks ties
by document id, descending (strcmp). :func:`ranked` reproduces that order, so the ranks we write, the cut for MRR@10
and trec_eval's own view of the run always agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

NDCG_CUTOFFS = (1, 3, 5, 10, 100)
RECALL_CUTOFFS = (10, 100)
MAP_CUTOFF = 100
P_CUTOFF = 10
MRR_CUTOFF = 10

# our name -> pytrec_eval's per-query key, one table per evaluator
NDCG_KEYS: dict[str, str] = {f"nDCG@{k}": f"ndcg_cut_{k}" for k in NDCG_CUTOFFS}
BINARY_KEYS: dict[str, str] = {
    **{f"Recall@{k}": f"recall_{k}" for k in RECALL_CUTOFFS},
    f"MAP@{MAP_CUTOFF}": f"map_cut_{MAP_CUTOFF}",
    f"P@{P_CUTOFF}": f"P_{P_CUTOFF}",
}
MEASURE_KEYS: dict[str, str] = {**NDCG_KEYS, **BINARY_KEYS}  # the measures read straight off the run
METRIC_NAMES: list[str] = [*MEASURE_KEYS, f"MRR@{MRR_CUTOFF}", "MRR"]

Run = dict[str, dict[str, float]]  # query_id -> {doc_id: score}
Qrels = dict[str, dict[str, int]]  # query_id -> {doc_id: grade}
QuerySet = Literal["qrels", "with_relevant", "run"]
Gain = Literal["linear", "exponential"]


@dataclass
class MetricsConfig:
    """How the run is scored (the ``metrics:`` section of an eval recipe); see the module docstring."""

    relevance_threshold: int = 1  # binary measures count grade >= this as relevant (trec_eval -l); TREC DL: 2
    ndcg_gain: Gain = "linear"  # linear: gain = grade (trec_eval, BEIR); exponential: 2^grade - 1
    queries: QuerySet = "qrels"  # qrels: trec_eval -c; with_relevant; run: trec_eval without -c
    judgements_outside_corpus: Literal["keep", "drop"] = "keep"  # drop: leave out judgements on missing docs

    def validate(self):
        if self.relevance_threshold < 1:
            raise ValueError(f"relevance_threshold must be >= 1 (0 would count judged non-relevant documents as "
                             f"relevant), got {self.relevance_threshold}")


def ranked(docs: dict[str, float]) -> list[tuple[str, float]]:
    """One query's documents in trec_eval's order: score descending, then doc id descending."""
    return sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)


def cut_run(run: Run, depth: int) -> Run:
    """Each query's first ``depth`` documents in trec_eval's order (MRR@10 = recip_rank on the run cut at 10)."""
    return {q: dict(ranked(docs)[:depth]) for q, docs in run.items()}


def exponential_gain(qrels: Qrels) -> Qrels:
    """The qrels with each positive grade g replaced by 2^g - 1 (for trec_eval's ndcg, whose gain is the grade)."""
    return {q: {d: (2 ** g - 1 if g > 0 else g) for d, g in docs.items()} for q, docs in qrels.items()}


def has_relevant(docs: dict[str, int], threshold: int) -> bool:
    return any(g >= threshold for g in docs.values())


def evaluate(qrels: Qrels, run: Run, *, relevance_threshold: int = 1, ndcg_gain: Gain = "linear",
             queries: QuerySet = "qrels") -> tuple[dict[str, float], dict[str, dict[str, float]], dict]:
    """Mean and per-query metrics; by default equal to ``trec_eval -c -l <relevance_threshold>`` on ``qrels``.

    ``qrels`` is the judgement file as given: its queries are the ones evaluated (``queries`` picks a subset, see the
    module docstring), and documents absent from the corpus stay in it. Returns ``(means, per_query, counts)``;
    counts says how many queries were evaluated, how many of them the run missed and how many have no judgement at
    or above the threshold.
    """
    import pytrec_eval

    if not qrels:
        raise ValueError("no judged queries to evaluate")
    # pytrec_eval wants every doc score a float and every grade an int; it evaluates a query only if the run has it.
    run = {q: {d: float(s) for d, s in docs.items()} for q, docs in run.items() if q in qrels and docs}
    if queries == "qrels":
        qids = sorted(qrels)
    elif queries == "with_relevant":
        qids = sorted(q for q, docs in qrels.items() if has_relevant(docs, relevance_threshold))
    elif queries == "run":
        qids = sorted(run)
    else:
        raise ValueError(f"queries must be qrels, with_relevant or run, got {queries!r}")
    if not qids:
        raise ValueError(f"no query left to evaluate (queries={queries}, relevance_threshold={relevance_threshold})")
    if ndcg_gain not in ("linear", "exponential"):
        raise ValueError(f"ndcg_gain must be linear or exponential, got {ndcg_gain!r}")

    graded = exponential_gain(qrels) if ndcg_gain == "exponential" else qrels
    ndcg = pytrec_eval.RelevanceEvaluator(graded, {"ndcg_cut." + ",".join(map(str, NDCG_CUTOFFS))})
    binary = pytrec_eval.RelevanceEvaluator(
        qrels, {"recall." + ",".join(map(str, RECALL_CUTOFFS)), f"map_cut.{MAP_CUTOFF}", f"P.{P_CUTOFF}",
                "recip_rank"}, relevance_level=relevance_threshold)
    s_ndcg, s_bin = ndcg.evaluate(run), binary.evaluate(run)
    s_mrr10 = binary.evaluate(cut_run(run, MRR_CUTOFF))
    per_query: dict[str, dict[str, float]] = {}
    for q in qids:
        if q in run:
            row = {name: float(s_ndcg[q][key]) for name, key in NDCG_KEYS.items()}
            row |= {name: float(s_bin[q][key]) for name, key in BINARY_KEYS.items()}
            row[f"MRR@{MRR_CUTOFF}"] = float(s_mrr10[q]["recip_rank"])
            row["MRR"] = float(s_bin[q]["recip_rank"])
        else:  # the system returned nothing for q: a real 0 on every measure (trec_eval -c), counted below
            row = {name: 0.0 for name in METRIC_NAMES}
        per_query[q] = row
    n = len(per_query)
    # fsum: the correctly rounded sum, so the mean does not depend on the order of the queries
    means = {name: math.fsum(r[name] for r in per_query.values()) / n for name in METRIC_NAMES}
    counts = {"queries": n, "queries_with_empty_run": sum(1 for q in qids if q not in run),
              "queries_without_relevant": sum(1 for q in qids if not has_relevant(qrels[q], relevance_threshold))}
    return means, per_query, counts


# ----------------------------------------------------------------------------------------------- TREC run files


def write_trec_run(run: Run, tag: str) -> str:
    """TREC run text, one line per retrieved document: ``qid Q0 docid rank score tag``, ranks from 1.

    Scores are written with ``repr`` so the file reads back to the exact same floats (a rounded score could create a
    tie trec_eval would break differently). Query and doc ids must not hold whitespace (the format is space-split).
    """
    tag = "".join(tag.split()) or "run"
    lines = []
    for q in sorted(run):
        for rank, (d, s) in enumerate(ranked(run[q]), 1):
            lines.append(f"{q} Q0 {d} {rank} {float(s)!r} {tag}")
    return "\n".join(lines) + ("\n" if lines else "")


def read_trec_run(path) -> Run:
    """Read a TREC run file back into ``{qid: {docid: score}}``; a bad line fails naming the file and line."""
    from pathlib import Path

    from workbench.errors import DataError

    from workbench.store.files import read_lines

    run: Run = {}
    for lineno, line in read_lines(Path(path)):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 6:
            raise DataError(f"{path}:{lineno}: expected 6 fields 'qid Q0 docid rank score tag', got {len(parts)}")
        try:
            score = float(parts[4])
        except ValueError:
            raise DataError(f"{path}:{lineno}: field 'score' must be a number, got {parts[4]!r}") from None
        run.setdefault(parts[0], {})[parts[2]] = score
    return run
