"""Our retrieval metrics vs raw pytrec_eval on the unmodified qrels file: they must be equal.

    python benchmarks/trec_parity.py [--data /work/shared/data/beir/trec-dl-2019-passage-pooled]
                                     [--run runs/bm25.dl19.trec] [--threshold 2]

TREC Deep Learning 2019 passage (43 judged queries, grades 0-3) over a pooled subset of MS MARCO, and the BM25 run
the pool came from (see PROVENANCE.md in the data folder). For each qrels split (``test``: the qrels restricted to the
pooled passages; ``test_full``: NIST's complete qrels, 4,923 of whose judgements name passages missing from the pool):

* ours: the collection through our loader (``workbench_eval.retrieval_data.load_data``), the run through
  ``workbench_eval.metrics.read_trec_run``, scored by ``workbench_eval.metrics.evaluate`` at ``relevance_threshold`` 2
  (the defaults otherwise: every qrels query in the mean, linear-gain nDCG, judgements on missing documents kept);
* raw: the qrels file read with the csv module and the run file split by hand, handed to
  ``pytrec_eval.RelevanceEvaluator(..., relevance_level=2)``; the mean is over every query of the qrels with 0 for a
  query the run lacks (``trec_eval -c``), summed with ``math.fsum`` (exactly rounded, so the query order cannot
  matter). nDCG comes from an evaluator at the default level (it reads the grades).
  MRR@10 is recip_rank on each query's first 10 documents in trec_eval's order (score desc, doc id desc).

Also recorded, to show what the old default did: ours with ``judgements_outside_corpus: drop`` (test_full), which
inflates recall and MAP. Writes benchmarks/results/trec_parity.json.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import ROOT, begin, write_record  # noqa: E402

sys.path.insert(0, str(ROOT))

# our name -> (pytrec_eval measure, its per-query key); None: computed on the cut run (MRR@10)
RAW_MEASURES = {
    **{f"nDCG@{k}": ("ndcg_cut", f"ndcg_cut_{k}") for k in (1, 3, 5, 10, 100)},
    "Recall@10": ("recall", "recall_10"), "Recall@100": ("recall", "recall_100"),
    "MAP@100": ("map_cut", "map_cut_100"), "P@10": ("P", "P_10"), "MRR": ("recip_rank", "recip_rank"),
}


def raw_pytrec_eval(qrels_path: Path, run_path: Path, level: int) -> dict[str, float]:
    """pytrec_eval on the file as given: no loader of ours, no filtering; mean as trec_eval -c."""
    import pytrec_eval

    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t")
        next(reader)  # header
        for q, d, g in reader:
            qrels.setdefault(q, {})[d] = int(g)
    run: dict[str, dict[str, float]] = {}
    with open(run_path, encoding="utf-8") as fh:
        for line in fh:
            q, _, d, _, s, _ = line.split()
            run.setdefault(q, {})[d] = float(s)
    ndcg = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.1,3,5,10,100"}).evaluate(run)
    binary = pytrec_eval.RelevanceEvaluator(qrels, {"recall.10,100", "map_cut.100", "P.10", "recip_rank"},
                                            relevance_level=level)
    scores = binary.evaluate(run)
    top10 = {q: dict(sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:10]) for q, docs in run.items()}
    rr10 = binary.evaluate(top10)
    out = {}
    for name, (measure, key) in RAW_MEASURES.items():
        table = ndcg if measure == "ndcg_cut" else scores
        out[name] = math.fsum(table[q][key] if q in table else 0.0 for q in qrels) / len(qrels)
    out["MRR@10"] = math.fsum(rr10[q]["recip_rank"] if q in rr10 else 0.0 for q in qrels) / len(qrels)
    return out


def ours(data_dir: Path, split: str, run_path: Path, level: int, outside: str = "keep") -> tuple[dict, dict]:
    from workbench_eval.metrics import evaluate, read_trec_run
    from workbench_eval.retrieval_data import DatasetConfig, load_data

    data = load_data(DatasetConfig(kind="beir", path=str(data_dir), split=split), level, outside)
    means, _, counts = evaluate(data.qrels, read_trec_run(run_path), relevance_threshold=level)
    return means, {**data.counts, **counts}


def main() -> int:
    started = begin()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/beir/trec-dl-2019-passage-pooled"))
    ap.add_argument("--run", default="runs/bm25.dl19.trec", help="run file, relative to --data or absolute")
    ap.add_argument("--threshold", type=int, default=2, help="relevance level of the binary measures (TREC DL: 2)")
    ap.add_argument("--results-dir", type=Path, default=None, help="where the record goes (default benchmarks/results)")
    args = ap.parse_args()
    run_path = args.run if Path(args.run).is_absolute() else args.data / args.run

    record = {"data": str(args.data), "run": str(run_path), "relevance_threshold": args.threshold, "splits": {}}
    worst = 0.0
    for split in ("test", "test_full"):
        mine, counts = ours(args.data, split, run_path, args.threshold)
        raw = raw_pytrec_eval(args.data / "qrels" / f"{split}.tsv", run_path, args.threshold)
        diff = max(abs(mine[k] - raw[k]) for k in raw)
        worst = max(worst, diff)
        entry = {"ours": mine, "raw_pytrec_eval": raw, "max_abs_diff": diff, "counts": counts}
        if split == "test_full":
            entry["ours_drop_outside_corpus"] = ours(args.data, split, run_path, args.threshold, "drop")[0]
        record["splits"][split] = entry
        print(f"\n{split}: {counts['queries']} queries, {counts['qrels_missing_doc']} judgements on missing docs")
        print(f"{'metric':<11} {'ours':>9} {'pytrec_eval':>12}")
        for k in raw:
            print(f"{k:<11} {mine[k]:>9.4f} {raw[k]:>12.4f}")
        print(f"max |ours - raw| = {diff:.3g}")
    # Same per-query numbers from the same C code, exactly rounded sums: equality is exact, not approximate.
    record["equal"] = worst == 0.0
    record.update(rendered(record))
    write_record("trec_parity", record, started, args.results_dir)
    print(f"\nequal: {record['equal']}")
    return 0 if record["equal"] else 1


def rendered(record: dict) -> dict:
    """Title, tables and notes for RESULTS.md: ours vs raw pytrec_eval per split, and what dropping judgements did."""
    tables = []
    for split, entry in record["splits"].items():
        c = entry["counts"]
        rows = [[name, entry["ours"][name], value, abs(entry["ours"][name] - value)]
                for name, value in entry["raw_pytrec_eval"].items()]
        tables.append({"title": f"qrels `{split}`: {c['queries']} queries, {c['judgements']} judgements, "
                                f"{c['qrels_missing_doc']} on passages missing from the pool",
                       "columns": ["metric", "ours", "raw pytrec_eval", "abs diff"], "rows": rows,
                       "formats": ["", ".4f", ".4f", ".1g"]})
    full = record["splits"]["test_full"]
    drop = full["ours_drop_outside_corpus"]
    tables.append({"title": "`test_full`: judgements on missing passages kept (default) vs dropped",
                   "columns": ["metric", "kept (trec_eval)", "dropped"],
                   "rows": [[k, full["ours"][k], drop[k]] for k in ("nDCG@10", "Recall@100", "MAP@100")],
                   "formats": ["", ".4f", ".4f"]})
    return {"title": "Retrieval metrics vs raw pytrec_eval, TREC DL 2019 passage (BM25 run)",
            "tables": tables,
            "notes": [f"Relevance level {record['relevance_threshold']} for the binary measures; every metric equal: "
                      f"{record['equal']} (exactly rounded sums of the same per-query numbers, so equality is exact).",
                      "Dropping judgements on passages outside the pool (the old default) moves Recall@100 "
                      f"{full['ours']['Recall@100']:.4f} -> {drop['Recall@100']:.4f} and MAP@100 "
                      f"{full['ours']['MAP@100']:.4f} -> {drop['MAP@100']:.4f}."]}


if __name__ == "__main__":
    sys.exit(main())
