"""Our retrieval eval vs the `beir` package's, same model and data: time and metric agreement.

    python benchmarks/retrieval_eval.py --beir /work/shared/data/beir/scifact [--split test] [--model minilm-l6]
                                        [--reps 5] [--corpus-size N]

The sides, each repetition (with a fresh embedding cache), the order alternating between repetitions:

1. ours, cold: `workbench_eval.retrieval.run` with an empty embedding cache (encode corpus + queries, exact search,
   pytrec_eval);
2. beir: `GenericDataLoader` + `EvaluateRetrieval(DenseRetrievalExactSearch(model), score_function="cos_sim")`,
   `evaluate` + `evaluate_custom(..., "mrr")`. The sentence-transformers model is wrapped here in the two-method
   interface beir's search expects (``encode_queries``, ``encode_corpus``), because ``beir.retrieval.models`` does not
   import next to vLLM 0.31; the wrapper joins title and text exactly as beir's ``SentenceBERT`` does;
3. ours, warm: the same eval again right after 1, corpus embeddings from its cache.

Before any timing both sides run once on a 50-document, 10-query slice (the same warm-up: page cache, model files,
kernels). ``--corpus-size N`` runs on a subset written to a temporary BEIR folder: every document judged for the
split's queries plus a seeded sample of the others, up to N (faster; metrics then differ from the full collection).

Reports wall times (each includes loading data and model, not importing libraries) as median, min and max over the
repetitions, the ratio of the medians, and the largest metric difference (a) against beir's own numbers, which beir
rounds to 5 decimals, and (b) against pytrec_eval on beir's unrounded run, through the same metric code as ours, which
isolates retrieval differences from rounding. Writes ``benchmarks/results/retrieval_eval.json``.
Needs `pip install beir` (benchmark-only; `pip install --no-deps beir` is enough next to this project).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import begin, write_record  # noqa: E402

K_VALUES = [1, 3, 5, 10, 100]


class SentenceTransformerForBeir:
    """beir's dense-search model interface over a sentence-transformers model (as beir's SentenceBERT)."""

    def __init__(self, path: str, sep: str = " "):
        from sentence_transformers import SentenceTransformer

        self.model, self.sep = SentenceTransformer(path), sep

    def encode_queries(self, queries: list[str], batch_size: int = 16, **kwargs):
        return self.model.encode(queries, batch_size=batch_size, show_progress_bar=False, convert_to_tensor=True)

    def encode_corpus(self, corpus: list[dict], batch_size: int = 8, **kwargs):
        texts = [(d["title"] + self.sep + d["text"]).strip() if "title" in d else d["text"].strip() for d in corpus]
        return self.model.encode(texts, batch_size=batch_size, show_progress_bar=kwargs.get("show_progress_bar", True),
                                 convert_to_tensor=True)


def run_ours(beir_dir: str, split: str, model: str, batch_size: int, out: Path) -> tuple[dict, float]:
    import workbench_eval.retrieval as retrieval
    from workbench.config import build

    cfg = build(retrieval.RetrievalEvalConfig, {
        "job": "eval_retrieval", "run_name": out.name, "output_dir": str(out),
        "model": {"name": model, "kind": "sentence-transformers", "batch_size": batch_size},
        "dataset": {"kind": "beir", "path": beir_dir, "split": split}, "search": {"top_k": max(K_VALUES)}})
    t0 = time.perf_counter()
    res = retrieval.run(cfg, overwrite=True)
    return res, time.perf_counter() - t0


def run_beir(beir_dir: str, split: str, model: str, batch_size: int) -> tuple[dict, dict, float]:
    from beir.datasets.data_loader import GenericDataLoader
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    from workbench.models import resolve_model

    t0 = time.perf_counter()
    corpus, queries, qrels = GenericDataLoader(data_folder=beir_dir).load(split=split)
    search = DenseRetrievalExactSearch(SentenceTransformerForBeir(resolve_model(model)), batch_size=batch_size,
                                       corpus_chunk_size=50_000)
    ev = EvaluateRetrieval(search, k_values=K_VALUES, score_function="cos_sim")
    results = ev.retrieve(corpus, queries)
    ndcg, _map, recall, _p = ev.evaluate(qrels, results, K_VALUES)
    mrr = ev.evaluate_custom(qrels, results, [10], metric="mrr")
    dt = time.perf_counter() - t0
    metrics = {**{f"nDCG@{k}": ndcg[f"NDCG@{k}"] for k in (1, 3, 5, 10, 100)},
               "Recall@10": recall["Recall@10"], "Recall@100": recall["Recall@100"], "MAP@100": _map["MAP@100"],
               "MRR@10": mrr["MRR@10"]}
    return metrics, results, dt


def write_subset(beir_dir: str, split: str, out: Path, corpus_size: int, n_queries: int | None, seed: int) -> str:
    """A BEIR folder with the split's queries (or a sample of them), every document judged for them, and a seeded
    sample of the other documents up to ``corpus_size``."""
    from workbench.store.beir import load_qrels

    src = Path(beir_dir)
    qrels = load_qrels(beir_dir, split)
    qids = sorted(qrels)
    if n_queries:
        qids = sorted(random.Random(seed).sample(qids, min(n_queries, len(qids))))
    judged = {d for q in qids for d in qrels[q]}
    corpus = [line for line in (src / "corpus.jsonl").read_text().splitlines() if line.strip()]
    ids = [json.loads(line)["_id"] for line in corpus]
    others = [d for d in ids if d not in judged]
    keep = judged | set(random.Random(seed).sample(others, max(0, min(len(others), corpus_size - len(judged)))))
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    (out / "corpus.jsonl").write_text("".join(line + "\n" for line, d in zip(corpus, ids) if d in keep))
    wanted = set(qids)
    (out / "queries.jsonl").write_text("".join(line + "\n" for line in (src / "queries.jsonl").read_text().splitlines()
                                               if line.strip() and json.loads(line)["_id"] in wanted))
    (out / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{g}\n" for q in qids for d, g in qrels[q].items()))
    return str(out)


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main() -> int:
    started = begin()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--beir", required=True, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5, help="repetitions of (ours cold + warm, beir), alternating")
    ap.add_argument("--corpus-size", type=int, default=None, help="run on a subset of this many documents")
    ap.add_argument("--results-dir", type=Path, default=None, help="where the record goes (default benchmarks/results)")
    args = ap.parse_args()

    # Import the heavy libraries before any timing: whichever side ran first would otherwise pay for them.
    import beir.retrieval.evaluation  # noqa: F401
    import sentence_transformers  # noqa: F401

    import workbench_eval.retrieval  # noqa: F401
    from workbench_eval.metrics import evaluate, read_trec_run
    from workbench.store.beir import load_qrels
    from workbench.models import resolve_model

    # Resolved once, before WORKBENCH_HOME moves to an empty cache: neither side may pay for locating the model.
    model = resolve_model(args.model)
    work = Path(tempfile.mkdtemp(prefix="retrieval-bench-"))
    data = args.beir
    if args.corpus_size:
        data = write_subset(args.beir, args.split, work / "subset", args.corpus_size, None, 0)

    def cold_and_warm(folder: str, tag: str) -> tuple[dict, float, dict, float, Path]:
        os.environ["WORKBENCH_HOME"] = str(work / f"home-{tag}")  # an empty embedding cache for the cold run
        ours, t_ours = run_ours(folder, args.split, model, args.batch_size, work / f"cold-{tag}")
        warm, t_warm = run_ours(folder, args.split, model, args.batch_size, work / f"warm-{tag}")
        return ours, t_ours, warm, t_warm, work / f"cold-{tag}" / "run.trec"

    # The same warm-up for both sides before any timing.
    print("[bench] warm-up: both sides on a 50-document, 10-query slice ...", file=sys.stderr)
    tiny = write_subset(args.beir, args.split, work / "warmup", 50, 10, 1)
    cold_and_warm(tiny, "warmup")
    run_beir(tiny, args.split, model, args.batch_size)

    times = {"ours_cold": [], "beir": [], "ours_warm": []}
    first = None
    metrics_seen = {"ours": [], "beir": []}
    for rep in range(args.reps):
        for side in (("ours", "beir") if rep % 2 == 0 else ("beir", "ours")):
            print(f"[bench] repetition {rep + 1}/{args.reps}: {side} on {data} {args.split} ...", file=sys.stderr)
            if side == "ours":
                ours, t_ours, warm, t_warm, run_file = cold_and_warm(data, str(rep))
                times["ours_cold"].append(t_ours)
                times["ours_warm"].append(t_warm)
                metrics_seen["ours"].append(ours["metrics"])
            else:
                beir_metrics, beir_run, t_beir = run_beir(data, args.split, model, args.batch_size)
                times["beir"].append(t_beir)
                metrics_seen["beir"].append(beir_metrics)
        if first is None:
            first = (ours, warm, run_file, beir_metrics, beir_run)
    ours, warm, run_file, beir_metrics, beir_run = first
    t = {k: summary(v) for k, v in times.items()}

    qrels = load_qrels(data, args.split)  # as given, as our eval scores them
    beir_unrounded, _, _ = evaluate(qrels, beir_run)
    names = [n for n in ours["metrics"] if n in beir_metrics]  # beir has no uncut MRR or P@10 here
    d_rounded = max(abs(ours["metrics"][n] - beir_metrics[n]) for n in names)
    d_exact = max(abs(ours["metrics"][n] - beir_unrounded[n]) for n in names)
    our_run = read_trec_run(run_file)
    same_top10 = sum(1 for q in qrels if sorted(our_run.get(q, {}), key=lambda d: -our_run[q][d])[:10]
                     == sorted(beir_run.get(q, {}), key=lambda d: -beir_run[q][d])[:10])
    common = [(our_run[q][d], beir_run[q][d]) for q in our_run for d in our_run[q] if d in beir_run.get(q, {})]
    max_score_diff = max(abs(a - b) for a, b in common) if common else float("nan")
    stable = all(m == metrics_seen["ours"][0] for m in metrics_seen["ours"]) and \
        all(m == metrics_seen["beir"][0] for m in metrics_seen["beir"])
    ratio_cold = t["ours_cold"]["median"] / t["beir"]["median"]
    ratio_warm = t["ours_warm"]["median"] / t["beir"]["median"]

    print(f"\n{'metric':<11} {'ours':>9} {'ours warm':>10} {'beir':>9} {'beir exact':>11}")
    for n in names:
        print(f"{n:<11} {ours['metrics'][n]:>9.5f} {warm['metrics'][n]:>10.5f} {beir_metrics[n]:>9.5f} "
              f"{beir_unrounded[n]:>11.6f}")
    print(f"\nwall time medians: ours cold {t['ours_cold']['median']:.1f}s, beir {t['beir']['median']:.1f}s, ours "
          f"warm {t['ours_warm']['median']:.1f}s; ratio ours/beir cold {ratio_cold:.3f}, warm {ratio_warm:.3f}")
    print(f"max |ours - beir| over {len(names)} metrics: {d_rounded:.2e} vs beir's 5-decimal numbers, "
          f"{d_exact:.2e} vs pytrec_eval on beir's run (goal: <= 1e-6)")
    print(f"queries with the identical top-10: {same_top10}/{len(qrels)}; max score difference on shared "
          f"(query, doc) pairs: {max_score_diff:.2e}")
    n_docs = sum(1 for line in open(Path(data) / "corpus.jsonl") if line.strip())
    where = (f"a {n_docs}-document subset of {args.beir} (every judged document kept)" if args.corpus_size
             else f"{args.beir}, {n_docs} documents")
    figures = {"model": args.model, "dataset": args.beir, "split": args.split, "corpus_docs": n_docs,
               "corpus_subset": bool(args.corpus_size), "reps": args.reps, "seconds": t, "times": times,
               "ratio_cold": ratio_cold, "ratio_warm": ratio_warm, "max_diff_vs_beir_rounded": d_rounded,
               "max_diff_vs_beir_run_pytrec_eval": d_exact, "identical_top10": same_top10, "queries": len(qrels),
               "max_score_diff": max_score_diff, "metrics_identical_across_reps": stable, "ours": ours["metrics"],
               "beir": beir_metrics, "beir_unrounded": beir_unrounded, "ours_timings": ours["timings"],
               "warm_timings": warm["timings"]}
    row = lambda label, s: [label, s["median"], s["min"], s["max"]]  # noqa: E731
    payload = {
        "title": f"Retrieval evaluation vs `beir` (`benchmarks/retrieval_eval.py`, {args.model}, {args.split} split)",
        "tables": [
            {"title": f"Metrics on {where}, {len(qrels)} queries",
             "columns": ["metric", "ours", "beir (5 decimals)", "pytrec_eval on beir's run"],
             "rows": [[n, ours["metrics"][n], beir_metrics[n], beir_unrounded[n]] for n in names],
             "formats": ["", ".5f", ".5f", ".5f"]},
            {"title": f"Wall time, {args.reps} alternating repetitions after the same warm-up (s)",
             "columns": ["side", "median", "min", "max", "ratio of medians to beir"],
             "rows": [row("ours, cold embedding cache", t["ours_cold"]) + [ratio_cold],
                      row("beir `EvaluateRetrieval` + `DenseRetrievalExactSearch`", t["beir"]) + [1.0],
                      row("ours, warm embedding cache", t["ours_warm"]) + [ratio_warm]],
             "formats": ["", ".1f", ".1f", ".1f", ".3f"]},
        ],
        "notes": [f"Largest metric difference: {d_rounded:.1e} vs beir's rounded numbers, {d_exact:.1e} vs "
                  f"pytrec_eval on beir's unrounded run; identical top-10 for {same_top10}/{len(qrels)} queries; "
                  f"largest score difference on shared (query, doc) pairs {max_score_diff:.1e}; metrics identical "
                  f"across repetitions: {stable}."],
        "results": figures,
    }
    write_record("retrieval_eval", payload, started, args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
