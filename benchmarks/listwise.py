"""List-wise embedding losses side by side: step time relative to InfoNCE, and nDCG@10 on SciFact's test claims.

    python benchmarks/listwise.py --beir /work/shared/data/beir/scifact --documents DIR   # synthetic graded lists
    python benchmarks/listwise.py --beir /work/shared/data/beir/scifact --quick           # real-data lists only

Training lists (the same for every loss):

* ``--documents DIR``: SyCL's setting -- synthetic graded documents for SciFact's *train* claims, written by the
  documents job first (slow: one LLM call per claim and grade), e.g.
  ``workbench generate documents --config recipes/generate/smollm2_documents_fiqa.yaml
  run_name=smollm2-documents-scifact queries.kind=beir queries.path=/work/shared/data/beir/scifact
  queries.split=train queries.size=null``
  and then ``--documents runs/smollm2-documents-scifact/documents``;
* ``--quick``: real data only, no generation: per train claim its first qrels document at grade 3, the top
  ``--bm25`` BM25 (bm25s) hits that are not its positives at grade 1, ``--random`` random documents at grade 0.

1. Step time: one encoder per loss, all from the same weights, fed the same pre-collated batches, timed round-robin
   (step k of every loss before step k+1 of any, the order rotating each round) so machine load drifts hit all
   alike. A step is forward + loss +
   backward + AdamW update; collation (tokenisation) is outside the timer. ``infonce`` (sentence-transformers'
   MultipleNegativesRankingLoss) gets the list binarised at grade >= 2 with every document below 2 as a hard
   negative, so it encodes as many documents per query as the list-wise losses whenever the list has one positive
   (the quick lists do). Reported: median and fastest step time, the median's ratio to infonce (goal: ws2 <= 1.2x),
   documents per step, and the loss alone (similarity + loss + backward on fixed embeddings, no encoder).
2. Quality: the base model, and one model per loss trained ``--steps`` steps through the real training job
   (:func:`workbench.training.embedding.run`, SentenceTransformerTrainer) on the same lists, each evaluated with
   sentence-transformers' ``InformationRetrievalEvaluator`` on SciFact's test claims (qrels are binary) against the
   corpus: all of it, or ``--corpus-size`` documents that include every judged one (faster; inflates nDCG, stated
   in the output).

Writes ``<out>/results.json`` and the record ``benchmarks/results/listwise.json`` (rendered into RESULTS.md), and
prints both tables as Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import begin, write_record  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LOSSES = ["infonce", "ws2", "listnet", "lambdaloss", "graded_infonce"]


# ----------------------------------------------------------------------------------------------- data


def quick_lists(beir: str, n_bm25: int, n_random: int, seed: int, limit: int | None) -> list[dict]:
    """Graded lists from real data only: qrels positive 3, BM25 hits 1, random 0 (SciFact train claims)."""
    import bm25s

    from workbench.store.beir import doc_text, load_split

    sp = load_split(beir, "train")
    ids = list(sp.corpus)
    texts = [doc_text(sp.corpus[d]) for d in ids]
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    rng = random.Random(seed)
    qids = sorted(sp.queries, key=lambda q: (len(q), q))
    if limit:
        qids = rng.sample(qids, min(limit, len(qids)))
    hits, _ = retriever.retrieve(bm25s.tokenize([sp.queries[q] for q in qids], stopwords="en", show_progress=False),
                                 k=n_bm25 + 10, show_progress=False)
    rows = []
    for q, top in zip(qids, hits.tolist()):
        positives = [d for d, g in sorted(sp.qrels[q].items()) if g > 0]
        if not positives:
            continue
        bm25 = [ids[i] for i in top if ids[i] not in positives][:n_bm25]
        taken = set(positives) | set(bm25)
        rand = []
        while len(rand) < n_random:
            d = rng.choice(ids)
            if d not in taken:
                rand.append(d)
                taken.add(d)
        docs = [positives[0], *bm25, *rand]
        rows.append({"query_id": q, "query": sp.queries[q], "docs": [doc_text(sp.corpus[d]) for d in docs],
                     "grades": [3] + [1] * len(bm25) + [0] * len(rand)})
    return rows


def write_lists(rows: list[dict], folder: Path) -> Path:
    """As a finished shard folder, the form the training job reads."""
    from workbench.store.shards import finalize, write_shard

    write_shard(folder, 0, rows)
    finalize(folder, [len(rows)], {"job": "benchmark-quick-lists", "columns": list(rows[0])})
    return folder


def test_split(beir: str, corpus_size: int | None, seed: int, n_queries: int | None):
    from workbench.store.beir import doc_text, load_split

    sp = load_split(beir, "test")
    qids = sorted(sp.queries)
    if n_queries:
        qids = sorted(random.Random(seed).sample(qids, min(n_queries, len(qids))))
    relevant = {q: {d for d, g in sp.qrels[q].items() if g > 0} for q in qids}
    doc_ids = list(sp.corpus)
    if corpus_size and corpus_size < len(doc_ids):
        judged = sorted({d for ds in relevant.values() for d in ds})
        others = [d for d in doc_ids if d not in set(judged)]
        doc_ids = judged + random.Random(seed).sample(others, max(0, corpus_size - len(judged)))
    corpus = {d: doc_text(sp.corpus[d]) for d in doc_ids}
    return {q: sp.queries[q] for q in qids}, corpus, relevant


# ----------------------------------------------------------------------------------------------- timing


def time_steps(model_path: str, lists, losses: list[str], batch_size: int, steps: int, warmup: int,
               max_seq_length: int, temperature: float, infonce_negatives: int) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

    from workbench.training.embedding import ListwiseLossConfig, build_loss
    from workbench.training.listwise_data import ListwiseDataCollator, infonce_columns

    need = batch_size * (steps + warmup)
    lists = (lists * (need // len(lists) + 1))[:need]
    setups = {}
    for name in losses:
        torch.manual_seed(0)
        model = SentenceTransformer(model_path)
        model.max_seq_length = max_seq_length
        model.train()
        loss = build_loss(ListwiseLossConfig(name=name, temperature=temperature), model)
        batches = []
        for b in range(steps + warmup):
            chunk = lists[b * batch_size:(b + 1) * batch_size]
            if name == "infonce":
                cols, _ = infonce_columns(chunk, 2, infonce_negatives)
                feats = [{k: cols[k][i] for k in cols} for i in range(len(cols["query"]))]
                batch = SentenceTransformerDataCollator(preprocess_fn=model.preprocess)(feats)
            else:
                feats = [{"query": r.query, "docs": r.docs, "grades": r.grades} for r in chunk]
                batch = ListwiseDataCollator(model.preprocess)(feats)
            prefixes = [k[:-len("input_ids")] for k in batch if k.endswith("_input_ids")]
            features = [{k[len(p):]: v for k, v in batch.items() if k.startswith(p)} for p in prefixes]
            docs = sum(f["input_ids"].shape[0] for f in features[1:])
            batches.append((features, batch.get("label"), docs))
        setups[name] = (model, loss, torch.optim.AdamW(model.parameters(), lr=1e-5), batches)
    times = {name: [] for name in losses}
    for step in range(steps + warmup):
        # rotate who goes first each round, so no loss always runs right after another's backward
        for name in losses[step % len(losses):] + losses[:step % len(losses)]:
            model, loss, opt, batches = setups[name]
            features, labels, _ = batches[step]
            t0 = time.perf_counter()
            value = loss(features, labels)
            opt.zero_grad()
            value.backward()
            opt.step()
            dt = time.perf_counter() - t0
            if step >= warmup:
                times[name].append(dt)
    out = {}
    base = statistics.median(times["infonce"]) if "infonce" in times else None
    for name in losses:
        med = statistics.median(times[name])
        docs = statistics.mean(b[2] for b in setups[name][3])
        out[name] = {"median_step_s": med, "min_step_s": min(times[name]), "max_step_s": max(times[name]),
                     "ratio_to_infonce": med / base if base else None, "docs_per_step": docs,
                     "steps_timed": len(times[name])}
    return out


def time_loss_only(losses: list[str], batch_size: int, list_size: int, dim: int, temperature: float,
                   reps: int = 50) -> dict:
    """The loss's own cost: similarity + loss + backward on fixed embeddings (B queries, B*K documents), no encoder."""
    import torch

    from workbench.training.embedding import ListwiseLossConfig, build_loss

    g = torch.Generator().manual_seed(0)
    q0 = torch.randn(batch_size, dim, generator=g)
    d0 = torch.randn(batch_size * list_size, dim, generator=g)  # query 0's K documents first
    grades = torch.tensor([[3.0] + [1.0] * (list_size - 2) + [0.0]] * batch_size)
    out = {}
    for name in losses:
        loss = build_loss(ListwiseLossConfig(name=name, temperature=temperature), None)
        times = []
        for _ in range(reps):
            q, d = q0.clone().requires_grad_(True), d0.clone().requires_grad_(True)
            t0 = time.perf_counter()
            if name == "infonce":  # MNRL's columns: anchors, positives, then each negative column
                cols = [q] + list(d.view(batch_size, list_size, dim).unbind(1))
                value = loss.compute_loss_from_embeddings(cols, None)
            else:
                from workbench.losses.listwise.base import in_batch_layout

                value = loss.compute(*in_batch_layout(loss.similarity_fct(q, d), grades))
            value.backward()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out


# ----------------------------------------------------------------------------------------------- quality


def ndcg10(model_path: str, queries, corpus, relevant, max_seq_length: int, batch_size: int) -> float:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    model = SentenceTransformer(model_path)
    model.max_seq_length = max_seq_length
    ev = InformationRetrievalEvaluator(queries, corpus, relevant, name="scifact", batch_size=batch_size,
                                       ndcg_at_k=[10], mrr_at_k=[10], accuracy_at_k=[10], precision_recall_at_k=[10],
                                       map_at_k=[10], write_csv=False)
    return ev(model)[ev.primary_metric]


def train(lists_dir: Path, loss: str, args, out: Path) -> dict:
    from workbench.config import build
    from workbench.training.embedding import ListwiseTrainConfig, run

    cfg = build(ListwiseTrainConfig, {
        "job": "train", "method": "listwise", "run_name": f"bench-{loss}", "output_dir": str(out / "runs" / loss),
        "seed": args.seed, "model": args.model, "data": {"path": str(lists_dir)},
        "loss": {"name": loss, "temperature": args.temperature, "infonce_negatives": args.infonce_negatives},
        "eval": None,
        "optim": {"max_steps": args.steps, "per_device_train_batch_size": args.batch_size,
                  "learning_rate": args.lr, "warmup_steps": 0.1, "logging_steps": max(1, args.steps // 5),
                  "save_steps": args.steps, "save_total_limit": 1, "max_seq_length": args.max_seq_length}})
    return run(cfg, overwrite=True)


def main() -> None:
    started = begin()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--beir", required=True, help="BEIR SciFact folder (corpus.jsonl, queries.jsonl, qrels/)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--documents", help="graded lists for the train claims: a documents/lists job output")
    src.add_argument("--quick", action="store_true", help="real-data lists: qrels 3, BM25 1, random 0")
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--losses", default=",".join(LOSSES))
    ap.add_argument("--train-queries", type=int, default=None, help="quick: use this many train claims (default all)")
    ap.add_argument("--bm25", type=int, default=3, help="quick: BM25 hits per claim at grade 1")
    ap.add_argument("--random", type=int, default=2, help="quick: random documents per claim at grade 0")
    ap.add_argument("--steps", type=int, default=50, help="training steps per loss")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--infonce-negatives", type=int, default=None,
                    help="infonce hard negatives per claim (default: every document below grade 2 of the first list)")
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument("--timing-steps", type=int, default=10)
    ap.add_argument("--timing-warmup", type=int, default=2)
    ap.add_argument("--test-queries", type=int, default=None, help="evaluate on a sample of the 300 test claims")
    ap.add_argument("--corpus-size", type=int, default=None, help="evaluate against a corpus sample (judged docs kept)")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (fewer helps on a shared CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench-listwise")
    ap.add_argument("--results-dir", type=Path, default=None, help="where the record goes (default benchmarks/results)")
    args = ap.parse_args()
    losses = [x.strip() for x in args.losses.split(",") if x.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from workbench.models import resolve_model
    from workbench.training.listwise_data import ListwiseDataConfig, load_lists

    if args.quick:
        lists_dir = write_lists(quick_lists(args.beir, args.bm25, args.random, args.seed, args.train_queries),
                                out / "quick-lists")
    else:
        lists_dir = Path(args.documents)
    lists = load_lists(ListwiseDataConfig(path=str(lists_dir)), seed=args.seed)
    if args.infonce_negatives is None:
        args.infonce_negatives = min(sum(g < 2 for g in r.grades) for r in lists)
    sizes = sorted({len(r.docs) for r in lists})
    print(f"[bench] {len(lists)} training lists of {sizes} documents from {lists_dir}; "
          f"infonce uses {args.infonce_negatives} hard negatives", file=sys.stderr)
    results = {"setup": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "lists": str(lists_dir), "list_sizes": sizes,
               "num_lists": len(lists)}
    base_path = resolve_model(args.model)

    def save():  # after each stage, so an interrupted run keeps what it measured
        (out / "results.json").write_text(json.dumps(results, indent=2, default=float))

    if not args.skip_timing:
        t0 = time.perf_counter()
        results["timing"] = time_steps(base_path, lists, losses, args.batch_size, args.timing_steps,
                                       args.timing_warmup, args.max_seq_length, args.temperature,
                                       args.infonce_negatives)
        dim = results["timing_dim"] = _embedding_dim(base_path)
        for name, sec in time_loss_only(losses, args.batch_size, max(sizes), dim, args.temperature).items():
            results["timing"][name]["loss_only_ms"] = 1000 * sec
        save()
        print(f"[bench] timing took {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        print_timing(results)

    if not args.skip_quality:
        queries, corpus, relevant = test_split(args.beir, args.corpus_size, args.seed, args.test_queries)
        results["eval"] = {"test_queries": len(queries), "corpus": len(corpus),
                           "corpus_note": "full corpus" if not args.corpus_size else
                           f"sample of {len(corpus)} documents including every judged one (nDCG inflated)"}
        quality = results["quality"] = {}
        quality["base"] = {"ndcg@10": ndcg10(base_path, queries, corpus, relevant, args.max_seq_length, 64)}
        save()
        for name in losses:
            summary = train(lists_dir, name, args, out)
            quality[name] = {"ndcg@10": ndcg10(summary["model"], queries, corpus, relevant, args.max_seq_length, 64),
                             "train_runtime_s": summary.get("train_runtime_s"), "train_loss": summary.get("train_loss"),
                             "train_rows": summary.get("train_rows")}
            save()
            print(f"[bench] {name}: nDCG@10 {quality[name]['ndcg@10']:.4f}", file=sys.stderr)

    print(f"\nLists: {len(lists)} from {lists_dir} (sizes {sizes}); model {args.model}; batch {args.batch_size}; "
          f"max_seq_length {args.max_seq_length}; temperature {args.temperature}")
    print_timing(results)
    if "quality" in results:
        ev = results["eval"]
        print(f"\nnDCG@10, SciFact test: {ev['test_queries']} claims, {ev['corpus_note']} ({ev['corpus']} docs); "
              f"{args.steps} steps per loss\n\n| model | nDCG@10 | train time (s) |\n|---|---|---|")
        for name, q in results["quality"].items():
            rt = f"{q['train_runtime_s']:.0f}" if q.get("train_runtime_s") else "-"
            print(f"| {name} | {q['ndcg@10']:.4f} | {rt} |")
    print(f"\n(results: {out / 'results.json'})")
    write_record("listwise", {**rendered(results, args, lists_dir), "results": results}, started, args.results_dir)


def rendered(results: dict, args, lists_dir: Path) -> dict:
    """Title, tables and notes for RESULTS.md."""
    tables, notes = [], []
    if "timing" in results:
        tables.append({
            "title": f"Step time: {args.timing_steps} timed steps per loss after {args.timing_warmup} warm-up, batch "
                     f"{args.batch_size}, max length {args.max_seq_length}, round-robin with the order rotated each "
                     "round",
            "columns": ["loss", "median step (s)", "min", "max", "median ratio to infonce", "docs encoded / step",
                        "loss alone, fwd+bwd (ms)"],
            "rows": [[name, t["median_step_s"], t["min_step_s"], t.get("max_step_s"), t["ratio_to_infonce"],
                      t["docs_per_step"], t.get("loss_only_ms")] for name, t in results["timing"].items()],
            "formats": ["", ".3f", ".3f", ".3f", ".2f", ".0f", ".2f"]})
        ws2 = results["timing"].get("ws2", {}).get("ratio_to_infonce")
        if ws2 is not None:
            notes.append(f"ws2 / infonce median step: {ws2:.2f} (goal <= 1.2: {'met' if ws2 <= 1.2 else 'not met'}).")
    if "quality" in results:
        ev = results["eval"]
        tables.append({
            "title": f"nDCG@10 on SciFact test: {ev['test_queries']} claims, {ev['corpus_note']} ({ev['corpus']} "
                     f"docs); {args.steps} training steps per loss",
            "columns": ["model", "nDCG@10", "train time (s)"],
            "rows": [[name, q["ndcg@10"], q.get("train_runtime_s")] for name, q in results["quality"].items()],
            "formats": ["", ".4f", ".0f"]})
    notes.append(f"Training lists: {results['num_lists']} from "
                 f"{'real data (--quick: qrels 3, BM25 1, random 0)' if args.quick else lists_dir} "
                 f"(sizes {results['list_sizes']}); model {args.model}"
                 + (f"; torch threads {args.threads}" if args.threads else "") + ".")
    return {"title": f"List-wise embedding losses (`benchmarks/listwise.py{' --quick' if args.quick else ''}`)",
            "tables": tables, "notes": notes}


def _embedding_dim(model_path: str) -> int:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_path).get_embedding_dimension()


def print_timing(results: dict) -> None:
    if "timing" not in results:
        return
    print("\n| loss | median step (s) | fastest step (s) | median ratio to infonce | docs encoded / step | "
          "loss alone, fwd+bwd (ms) |\n|---|---|---|---|---|---|")
    for name, t in results["timing"].items():
        ratio = f"{t['ratio_to_infonce']:.2f}x" if t["ratio_to_infonce"] else "-"
        print(f"| {name} | {t['median_step_s']:.3f} | {t['min_step_s']:.3f} | {ratio} | {t['docs_per_step']:.0f} | "
              f"{t.get('loss_only_ms', float('nan')):.2f} |")


if __name__ == "__main__":
    main()
