"""Our retrieval eval vs the `beir` package's, same model and data: time and metric agreement.

    python benchmarks/retrieval_eval.py --beir /work/shared/data/beir/scifact [--split test] [--model minilm-l6]

Runs, in order, on the full collection:

1. ours, cold: `eval.retrieval.run` with an empty embedding cache (encode corpus + queries, exact search, pytrec_eval);
2. beir: `GenericDataLoader` + `EvaluateRetrieval(DenseRetrievalExactSearch(model), score_function="cos_sim")`,
   `evaluate` + `evaluate_custom(..., "mrr")`. The sentence-transformers model is wrapped here in the two-method
   interface beir's search expects (``encode_queries``, ``encode_corpus``), because ``beir.retrieval.models`` does not
   import next to vLLM 0.31; the wrapper joins title and text exactly as beir's ``SentenceBERT`` does;
3. ours, warm: the same eval again, corpus embeddings from the cache.

Prints wall times (each includes loading data and model, not importing libraries), the time ratio, and the largest
metric difference (a) against beir's own numbers, which beir rounds to 5 decimals, and (b) against pytrec_eval on
beir's unrounded run, through the same metric code as ours, which isolates retrieval differences from rounding.
Needs `pip install beir` (benchmark-only; `pip install --no-deps beir` is enough next to this project).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
    import eval.retrieval as retrieval
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--beir", required=True, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    # Import the heavy libraries before any timing: whichever side ran first would otherwise pay for them.
    import beir.retrieval.evaluation  # noqa: F401
    import sentence_transformers  # noqa: F401

    import eval.retrieval  # noqa: F401
    from eval.metrics import evaluate
    from workbench.data.beir import load_split
    from workbench.runs import env_info

    env_info()

    work = Path(tempfile.mkdtemp(prefix="retrieval-bench-"))
    os.environ["WORKBENCH_HOME"] = str(work / "home")  # an empty embedding cache for the cold run

    print(f"[bench] ours (cold cache) on {args.beir} {args.split} ...", file=sys.stderr)
    ours, t_ours = run_ours(args.beir, args.split, args.model, args.batch_size, work / "cold")
    print("[bench] beir EvaluateRetrieval + DenseRetrievalExactSearch ...", file=sys.stderr)
    beir_metrics, beir_run, t_beir = run_beir(args.beir, args.split, args.model, args.batch_size)
    print("[bench] ours (warm cache) ...", file=sys.stderr)
    warm, t_warm = run_ours(args.beir, args.split, args.model, args.batch_size, work / "warm")

    qrels = load_split(args.beir, args.split).qrels
    beir_unrounded, _, _ = evaluate(qrels, beir_run)
    names = list(ours["metrics"])
    d_rounded = max(abs(ours["metrics"][n] - beir_metrics[n]) for n in names)
    d_exact = max(abs(ours["metrics"][n] - beir_unrounded[n]) for n in names)
    from eval.metrics import read_trec_run

    our_run = read_trec_run(work / "cold" / "run.trec")
    same_top10 = sum(1 for q in qrels if sorted(our_run.get(q, {}), key=lambda d: -our_run[q][d])[:10]
                     == sorted(beir_run.get(q, {}), key=lambda d: -beir_run[q][d])[:10])
    common = [(our_run[q][d], beir_run[q][d]) for q in our_run for d in our_run[q] if d in beir_run.get(q, {})]
    max_score_diff = max(abs(a - b) for a, b in common) if common else float("nan")

    print(f"\n{'metric':<11} {'ours':>9} {'ours warm':>10} {'beir':>9} {'beir exact':>11}")
    for n in names:
        print(f"{n:<11} {ours['metrics'][n]:>9.5f} {warm['metrics'][n]:>10.5f} {beir_metrics[n]:>9.5f} "
              f"{beir_unrounded[n]:>11.6f}")
    print(f"\nwall time: ours cold {t_ours:.1f}s (encode corpus {ours['timings']['encode_corpus_s']:.1f}s), "
          f"beir {t_beir:.1f}s, ours warm {t_warm:.1f}s")
    print(f"time ratio ours/beir: cold {t_ours / t_beir:.3f}, warm {t_warm / t_beir:.3f} (goal: <= 1)")
    print(f"max |ours - beir| over {len(names)} metrics: {d_rounded:.2e} vs beir's 5-decimal numbers, "
          f"{d_exact:.2e} vs pytrec_eval on beir's run (goal: <= 1e-6)")
    print(f"queries with the identical top-10: {same_top10}/{len(qrels)}; max score difference on shared "
          f"(query, doc) pairs: {max_score_diff:.2e}")
    figures = {"model": args.model, "dataset": args.beir, "split": args.split, "seconds_ours_cold": t_ours,
               "seconds_beir": t_beir, "seconds_ours_warm": t_warm, "ratio_cold": t_ours / t_beir,
               "ratio_warm": t_warm / t_beir, "max_diff_vs_beir_rounded": d_rounded,
               "max_diff_vs_beir_run_pytrec_eval": d_exact, "identical_top10": same_top10, "queries": len(qrels),
               "max_score_diff": max_score_diff, "ours": ours["metrics"], "beir": beir_metrics,
               "beir_unrounded": beir_unrounded, "ours_timings": ours["timings"], "warm_timings": warm["timings"]}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
