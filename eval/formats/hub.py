"""``dataset.kind: hub``: a BEIR data set by name (``BeIR/<name>`` on the Hugging Face hub, via ``datasets``),
downloaded once into ``$WORKBENCH_HOME/data/beir/<name>`` as a BEIR folder and read from there; offline it fails,
saying so."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from workbench.errors import DataError
from workbench_eval.formats.base import RetrievalData
from workbench_eval.formats.beir import load_folder


def check(cfg) -> None:
    if not cfg.name:
        raise ValueError("dataset.kind: hub needs dataset.name (a BEIR data set, e.g. scifact)")


def label(cfg) -> str:
    return cfg.name


def load(cfg) -> RetrievalData:
    return load_folder(download_beir(cfg.name, cfg.split), cfg.split)


def download_beir(name: str, split: str) -> Path:
    """``BeIR/<name>`` (corpus, queries) and ``BeIR/<name>-qrels`` (split) from the hub, once, as a BEIR folder."""
    from workbench.models import workbench_home

    target = workbench_home() / "data" / "beir" / name
    qrels_file = target / "qrels" / f"{split}.tsv"
    if (target / ".complete").is_file() and qrels_file.is_file():
        return target
    offline = any(os.environ.get(v, "0").lower() in ("1", "true", "yes")
                  for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if offline:
        raise DataError(f"dataset.name={name}: BeIR/{name} is not downloaded yet ({target}) and this machine is "
                        "offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set). Download it where there is internet, or "
                        "put a BEIR folder on disk and use dataset.kind=beir dataset.path=<folder>.")
    import datasets

    def fetch(repo, config, split_name):
        try:
            return datasets.load_dataset(repo, config, split=split_name)
        except Exception as e:  # network errors, missing repo/split: all the user's to fix
            raise DataError(f"dataset.name={name}: could not download {repo} ({config or split_name}) from the "
                            f"Hugging Face hub: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
                            "Check the name (BEIR data sets: scifact, nfcorpus, fiqa, ...) and the network, or use "
                            "dataset.kind=beir with a local folder.") from None

    target.parent.mkdir(parents=True, exist_ok=True)
    if not (target / ".complete").is_file():
        corpus, queries = fetch(f"BeIR/{name}", "corpus", "corpus"), fetch(f"BeIR/{name}", "queries", "queries")
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            with open(tmp / "corpus.jsonl", "w", encoding="utf-8") as fh:
                for r in corpus:
                    row = {"_id": str(r["_id"]), "title": r.get("title") or "", "text": r["text"]}
                    fh.write(json.dumps(row) + "\n")
            with open(tmp / "queries.jsonl", "w", encoding="utf-8") as fh:
                for r in queries:
                    fh.write(json.dumps({"_id": str(r["_id"]), "text": r["text"]}) + "\n")
            (tmp / "qrels").mkdir()
            (tmp / ".complete").write_text(f"BeIR/{name}\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    qrels = fetch(f"BeIR/{name}-qrels", None, split)
    lines = ["query-id\tcorpus-id\tscore"] + [f"{r['query-id']}\t{r['corpus-id']}\t{int(r['score'])}" for r in qrels]
    from workbench.store.files import atomic_write

    atomic_write(qrels_file, "\n".join(lines) + "\n")
    print(f"[eval] downloaded BeIR/{name} ({split}) into {target}", file=sys.stderr)
    return target


# ----------------------------------------------------------------------------------------------- list-wise rows
