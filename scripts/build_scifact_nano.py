"""Builds workbench/data/scifact_nano/, the small offline IR set the quickstart ships (NanoBEIR-style).

From the full BEIR SciFact folder (claims CC BY 4.0, abstracts ODC-By 1.0): 48 train claims and 48 test claims
(seeded), a corpus of every judged abstract of those claims plus each claim's top BM25 hits from the full corpus as
distractors, and their qrels. Rerun to rebuild:

    .venv/bin/python scripts/build_scifact_nano.py --beir ../shared/data/beir/scifact
"""

import argparse
import json
import random
from pathlib import Path

import bm25s

from workbench.store.beir import doc_text, load_split

ap = argparse.ArgumentParser()
ap.add_argument("--beir", required=True)
ap.add_argument("--out", default="workbench/data/scifact_nano")
ap.add_argument("--queries", type=int, default=48)
ap.add_argument("--distractors", type=int, default=6)
args = ap.parse_args()

rng = random.Random(0)
splits = {s: load_split(args.beir, s) for s in ("train", "test")}
corpus = splits["train"].corpus
ids = list(corpus)
retriever = bm25s.BM25()
retriever.index(bm25s.tokenize([doc_text(corpus[d]) for d in ids], stopwords="en", show_progress=False),
                show_progress=False)
keep_docs, keep_q, qrels = set(), {}, {}
for split, sp in splits.items():
    chosen = sorted(rng.sample(sorted(sp.queries), args.queries), key=lambda q: int(q))
    qrels[split] = {q: sp.qrels[q] for q in chosen}
    for q in chosen:
        keep_q[q] = sp.queries[q]
        keep_docs |= set(sp.qrels[q])
        hits, _ = retriever.retrieve(bm25s.tokenize([sp.queries[q]], stopwords="en", show_progress=False),
                                     k=args.distractors, show_progress=False)
        keep_docs |= {ids[i] for i in hits[0].tolist()}
out = Path(args.out)
(out / "qrels").mkdir(parents=True, exist_ok=True)
with open(out / "corpus.jsonl", "w") as fh:
    for d in ids:
        if d in keep_docs:
            fh.write(json.dumps({"_id": d, "title": corpus[d]["title"], "text": corpus[d]["text"]}) + "\n")
with open(out / "queries.jsonl", "w") as fh:
    for q, t in keep_q.items():
        fh.write(json.dumps({"_id": q, "text": t}) + "\n")
for split, rel in qrels.items():
    with open(out / "qrels" / f"{split}.tsv", "w") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for q, docs in rel.items():
            for d, g in docs.items():
                fh.write(f"{q}\t{d}\t{g}\n")
print(f"{len(keep_docs)} docs, {len(keep_q)} queries -> {out}")
