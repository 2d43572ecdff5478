"""On-disk cache of corpus representations: ``$WORKBENCH_HOME/cache/embeddings/<key>.npy`` (dense) / ``.npz`` (sparse).

The key hashes everything the vectors depend on: the model fingerprint (:func:`workbench.models.model_fingerprint`,
which changes when the weights or config change), the corpus (every doc id and text, in order) and the encoder
settings (kind, max length, pooling, prompts, ...). A changed model, corpus or setting gives a new key, so a stale
cache is never reused; old entries are simply never read again.

Encoding is resumable: the corpus is encoded in parts of :data:`PART_SIZE` documents, each part saved atomically in
``<key>.parts/`` as soon as it is done; a killed run re-encodes only the part it was in. The parts are joined into
the final file (written via temp + rename, so a reader never sees half an array) and then removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

PART_SIZE = 8192  # documents per resumable part; larger than small corpora, so they encode in one call


def cache_dir() -> Path:
    from workbench.models import workbench_home

    return workbench_home() / "cache" / "embeddings"


def corpus_hash(ids: list[str], texts: list[str]) -> str:
    """sha256 over every (id, text) pair in order; NUL separators keep ("ab","c") and ("a","bc") apart."""
    h = hashlib.sha256()
    for i, t in zip(ids, texts):
        h.update(i.encode("utf-8") + b"\0" + t.encode("utf-8") + b"\0")
    return h.hexdigest()


def cache_key(model_fingerprint: str, corpus_sha: str, settings: dict) -> str:
    blob = json.dumps({"model": model_fingerprint, "corpus": corpus_sha, "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _atomic_save(path: Path, save: Callable[[object], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        save(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _load(path: Path):
    """The cached array, or None if absent or unreadable (a damaged entry is re-encoded, with a warning)."""
    if not path.is_file():
        return None
    try:
        if path.suffix == ".npz":
            import scipy.sparse

            return scipy.sparse.load_npz(path).tocsr()
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        print(f"[cache] {path} is unreadable ({e}); encoding again", file=sys.stderr)
        return None


def _save(path: Path, arr) -> None:
    if path.suffix == ".npz":
        import scipy.sparse

        _atomic_save(path, lambda fh: scipy.sparse.save_npz(fh, arr, compressed=False))
    else:
        _atomic_save(path, lambda fh: np.save(fh, np.ascontiguousarray(arr), allow_pickle=False))


def _file(folder: Path, stem: str, name: str, kind: str) -> Path:
    ext = ".npz" if kind == "sparse" else ".npy"
    return folder / (f"{stem}{ext}" if name == "dense" else f"{stem}.{name}{ext}")


def cached_encode(key: str, texts: list[str], encode: Callable[[list[str]], dict], kinds: dict[str, str],
                  use_cache: bool = True, meta: dict | None = None) -> tuple[dict, bool]:
    """Return ``(encode(texts), hit)``, from the cache when every array of the key is there.

    ``encode`` maps a list of texts to ``{name: array}``: a (n, dim) float32 array for ``kinds[name] == "dense"``,
    a scipy CSR (n, vocab) matrix for ``"sparse"``. It is called on parts of :data:`PART_SIZE` texts and the parts
    are stacked in order. Files: ``<key>.npy`` for the array named ``dense``, ``<key>.<name>.npy|.npz`` for others.
    """
    if not use_cache:
        return _encode_parts(texts, encode, kinds, None), False
    folder = cache_dir()
    got = {name: _load(_file(folder, key, name, kind)) for name, kind in kinds.items()}
    if all(a is not None and a.shape[0] == len(texts) for a in got.values()):
        return got, True
    parts = folder / f"{key}.parts"
    out = _encode_parts(texts, encode, kinds, parts)
    # The description first, the arrays last: the arrays are what a later run takes as a hit, so a kill in between
    # leaves no hit without its description (only a description without arrays, rewritten by the next run).
    if meta is not None:
        _atomic_save(folder / f"{key}.json", lambda fh: fh.write(json.dumps(meta, indent=2).encode()))
    for name, kind in kinds.items():
        _save(_file(folder, key, name, kind), out[name])
    shutil.rmtree(parts, ignore_errors=True)
    return out, False


def _encode_parts(texts: list[str], encode, kinds: dict[str, str], parts: Path | None) -> dict:
    chunks: dict[str, list] = {name: [] for name in kinds}
    n_parts = (len(texts) + PART_SIZE - 1) // PART_SIZE
    for k in range(n_parts):
        part_texts = texts[k * PART_SIZE:(k + 1) * PART_SIZE]
        # A single part goes straight to the final files: saving it twice buys no resume.
        keep = parts is not None and n_parts > 1
        files = {name: _file(parts, f"part-{k:05d}", name, kind) for name, kind in kinds.items()} if keep else {}
        got = {name: _load(f) for name, f in files.items()}
        if not keep or any(a is None or a.shape[0] != len(part_texts) for a in got.values()):
            if n_parts > 1:
                print(f"[cache] encoding part {k + 1}/{n_parts} ({len(part_texts)} texts)", file=sys.stderr)
            got = encode(part_texts)
            for name, f in files.items():
                _save(f, got[name])
        for name in kinds:
            chunks[name].append(got[name])
    out = {}
    for name, kind in kinds.items():
        if kind == "sparse":
            import scipy.sparse

            out[name] = scipy.sparse.vstack(chunks[name], format="csr")
        else:
            out[name] = np.concatenate(chunks[name], axis=0) if len(chunks[name]) > 1 else chunks[name][0]
    return out
