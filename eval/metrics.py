"""Retrieval metrics through pytrec_eval (the trec_eval C code), never a re-implementation.

Reported measures and the trec_eval measure behind each:

=============  ====================  ===================================================================
name           trec_eval measure     note
=============  ====================  ===================================================================
nDCG@k         ``ndcg_cut.k``        k in 1, 3, 5, 10, 100; gain = the graded judgement (linear, as BEIR)
Recall@k       ``recall.k``          k in 10, 100
MAP@100        ``map_cut.100``
MRR@10         ``recip_rank``        on the run cut to its first 10 documents (see :func:`cut_run`)
=============  ====================  ===================================================================

trec_eval ignores the rank column of a run: it orders each query's documents by score, descending, and breaks ties
by document id, descending (strcmp). :func:`ranked` reproduces that order, so the ranks we write, the cut for MRR@10
and trec_eval's own view of the run always agree.

Every evaluated query gets a score: a query missing from the run (the system returned nothing) scores 0 on every
measure and is counted, rather than silently left out of the mean as pytrec_eval would do.
"""

from __future__ import annotations

NDCG_CUTOFFS = (1, 3, 5, 10, 100)
RECALL_CUTOFFS = (10, 100)
MAP_CUTOFF = 100
MRR_CUTOFF = 10

# our name -> pytrec_eval's per-query key
MEASURE_KEYS: dict[str, str] = {
    **{f"nDCG@{k}": f"ndcg_cut_{k}" for k in NDCG_CUTOFFS},
    **{f"Recall@{k}": f"recall_{k}" for k in RECALL_CUTOFFS},
    f"MAP@{MAP_CUTOFF}": f"map_cut_{MAP_CUTOFF}",
}
METRIC_NAMES: list[str] = [*MEASURE_KEYS, f"MRR@{MRR_CUTOFF}"]

Run = dict[str, dict[str, float]]  # query_id -> {doc_id: score}
Qrels = dict[str, dict[str, int]]  # query_id -> {doc_id: grade}


def ranked(docs: dict[str, float]) -> list[tuple[str, float]]:
    """One query's documents in trec_eval's order: score descending, then doc id descending."""
    return sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)


def cut_run(run: Run, depth: int) -> Run:
    """Each query's first ``depth`` documents in trec_eval's order (MRR@10 = recip_rank on the run cut at 10)."""
    return {q: dict(ranked(docs)[:depth]) for q, docs in run.items()}


def evaluate(qrels: Qrels, run: Run) -> tuple[dict[str, float], dict[str, dict[str, float]], dict]:
    """Mean and per-query metrics over the queries in ``qrels``.

    ``qrels`` must already hold only the queries to evaluate, each with at least one relevant (grade > 0) document
    (the loader drops and counts the others): a query without one would score a meaningless 0.0.
    Returns ``(means, per_query, counts)``; counts says how many queries were evaluated and how many the run missed.
    """
    import pytrec_eval

    if not qrels:
        raise ValueError("no judged queries to evaluate")
    no_rel = [q for q, docs in qrels.items() if not any(g > 0 for g in docs.values())]
    if no_rel:
        raise ValueError(f"{len(no_rel)} queries have no relevant document (e.g. {no_rel[:3]}); drop them first")
    # pytrec_eval wants every doc score a float and every grade an int.
    run = {q: {d: float(s) for d, s in docs.items()} for q, docs in run.items() if q in qrels and docs}
    main = pytrec_eval.RelevanceEvaluator(
        qrels, {"ndcg_cut." + ",".join(map(str, NDCG_CUTOFFS)), "recall." + ",".join(map(str, RECALL_CUTOFFS)),
                f"map_cut.{MAP_CUTOFF}"})
    mrr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"})
    scores = main.evaluate(run)
    rr = mrr.evaluate(cut_run(run, MRR_CUTOFF))
    per_query: dict[str, dict[str, float]] = {}
    for q in sorted(qrels):
        if q in scores:
            row = {name: float(scores[q][key]) for name, key in MEASURE_KEYS.items()}
            row[f"MRR@{MRR_CUTOFF}"] = float(rr[q]["recip_rank"])
        else:  # the system returned nothing for q: a real 0 on every measure, counted below
            row = {name: 0.0 for name in METRIC_NAMES}
        per_query[q] = row
    n = len(per_query)
    means = {name: sum(r[name] for r in per_query.values()) / n for name in METRIC_NAMES}
    counts = {"queries_evaluated": n, "queries_with_empty_run": sum(1 for q in qrels if q not in scores)}
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

    run: Run = {}
    with open(Path(path), encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
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
