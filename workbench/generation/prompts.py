"""Prompt sources: JSONL, Parquet, a ``datasets`` dataset, a GSM8K-format file, or reasoning-gym tasks.

Every source yields :class:`PromptRecord` (``prompt_id, prompt, reference``). Columns are *roles* mapped through
``column_map`` (``prompt``, ``id``, ``reference``), never positions. Bad input fails with the file, the line and the
field, and says which ``column_map`` entry fixes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from workbench.errors import DataError

ROLES = ("prompt", "id", "reference")


@dataclass
class PromptSourceConfig:
    kind: Literal["jsonl", "parquet", "datasets", "gsm8k", "reasoning_gym"] = "jsonl"
    path: str | None = None  # file (jsonl/parquet/gsm8k) or dataset name/folder (datasets)
    split: str = "train"  # datasets only
    column_map: dict[str, str] = field(default_factory=dict)  # role -> column (roles: prompt, id, reference)
    task: str | None = None  # reasoning_gym task name, e.g. "products"
    task_config: dict[str, Any] = field(default_factory=dict)  # reasoning_gym dataset kwargs
    size: int | None = None  # reasoning_gym: how many; others: keep the first `size`
    offset: int = 0  # skip the first `offset` records (train/held-out splits of one source)
    seed: int = 0  # reasoning_gym generation seed
    dedupe: bool = False  # drop records whose prompt text repeats an earlier one (before offset/size), so that
    #                       offset/size carve disjoint train and held-out splits out of one source

    def validate(self):
        bad = set(self.column_map) - set(ROLES)
        if bad:
            raise ValueError(f"column_map has unknown role(s) {sorted(bad)}; roles are {list(ROLES)}")
        if self.kind == "reasoning_gym":
            if not self.task:
                raise ValueError("kind: reasoning_gym needs `task` (e.g. products, gcd, basic_arithmetic)")
            if not self.size:
                raise ValueError("kind: reasoning_gym needs `size` (how many prompts to generate)")
        elif not self.path:
            raise ValueError(f"kind: {self.kind} needs `path`")


@dataclass
class PromptRecord:
    prompt_id: str
    prompt: str
    reference: str


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    from workbench.store.files import read_jsonl

    return read_jsonl(path)


def _column(role: str, cfg: PromptSourceConfig, default: str | None, columns: list[str], where: str,
            required: bool = True) -> str | None:
    col = cfg.column_map.get(role, default)
    if col is not None and col in columns:
        return col
    if not required and role not in cfg.column_map:
        return None
    raise DataError(f"{where}: column {col!r} for role '{role}' not found. Available columns: {sorted(columns)}. "
                    f"Set column_map.{role}: <one of those> in the recipe.")


def _from_table(rows: list[tuple[int, dict]], cfg: PromptSourceConfig, where: str, prefix: str) -> list[PromptRecord]:
    if not rows:
        raise DataError(f"{where}: no records")
    columns = sorted({k for _, r in rows for k in r})
    pcol = _column("prompt", cfg, "prompt", columns, where)
    icol = _column("id", cfg, "id", columns, where, required=False)
    rcol = _column("reference", cfg, "reference", columns, where, required=False)
    out = []
    for i, (line, r) in enumerate(rows):
        loc = f"{where}:{line}" if line else f"{where} row {i}"
        if pcol not in r:
            raise DataError(f"{loc}: field {pcol!r} (role 'prompt') is missing")
        prompt = r[pcol]
        if prompt is not None and not isinstance(prompt, str):
            raise DataError(f"{loc}: field {pcol!r} (role 'prompt') must be a string, got {type(prompt).__name__}")
        pid = str(r[icol]) if icol and r.get(icol) is not None else f"{prefix}{i}"
        ref = r.get(rcol) if rcol else None
        out.append(PromptRecord(pid, prompt or "", "" if ref is None else str(ref)))
    return out


def _gsm8k(path: Path) -> list[PromptRecord]:
    out = []
    for lineno, r in _read_jsonl(path):
        for f in ("question", "answer"):
            if f not in r:
                raise DataError(f"{path}:{lineno}: GSM8K-format record lacks field {f!r} "
                                "(expected {\"question\": ..., \"answer\": \"... #### final\"})")
        if "####" not in r["answer"]:
            raise DataError(f"{path}:{lineno}: field 'answer' has no '#### final' marker")
        final = r["answer"].rsplit("####", 1)[1].strip()
        out.append(PromptRecord(str(r.get("id", f"gsm8k-{lineno}")), r["question"], final))
    return out


def _json_default(obj: Any):
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def entry_to_reference(entry: dict) -> str:
    """A reasoning-gym entry as the JSON string a row stores as its ``reference``."""
    try:
        return json.dumps(dict(entry), sort_keys=True, ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError) as e:
        raise DataError(f"reasoning_gym entry cannot be stored as a JSON reference: {e}") from e


def reference_to_entry(reference: str) -> dict:
    """Inverse of :func:`entry_to_reference`; a clear :class:`DataError` when the reference is not one."""
    try:
        entry = json.loads(reference)
    except (TypeError, ValueError) as e:
        shown = reference if not isinstance(reference, str) or len(reference) <= 80 else reference[:77] + "..."
        raise DataError(
            f"reasoning_gym verifier: reference {shown!r} is not JSON; build references with "
            f"workbench.generation.prompts.entry_to_reference(entry)"
        ) from e
    if not isinstance(entry, dict) or "answer" not in entry:
        raise DataError(
            "reasoning_gym verifier: reference must be a JSON object with an 'answer' key "
            "(a reasoning_gym entry, as written by entry_to_reference)"
        )
    return entry


def _reasoning_gym(cfg: PromptSourceConfig) -> list[PromptRecord]:
    import reasoning_gym

    try:
        # Generate extra when deduplicating: small task spaces repeat questions.
        n = (cfg.size + cfg.offset) * (4 if cfg.dedupe else 1)
        ds = reasoning_gym.create_dataset(cfg.task, size=n, seed=cfg.seed, **cfg.task_config)
    except Exception as e:  # reasoning_gym raises plain ValueError/TypeError/KeyError for bad names/config
        raise DataError(f"reasoning_gym task {cfg.task!r} with task_config {cfg.task_config}: {e}") from None
    return [PromptRecord(f"{cfg.task}-{cfg.seed}-{i}", entry["question"], entry_to_reference(entry))
            for i, entry in enumerate(ds)]


def load_prompts(cfg: PromptSourceConfig) -> list[PromptRecord]:
    """Load, check ids are unique, then apply offset/size."""
    if cfg.kind == "reasoning_gym":
        records = _reasoning_gym(cfg)
    else:
        path = Path(cfg.path)
        if cfg.kind != "datasets" and not path.is_file():
            raise DataError(f"{path}: prompt file not found (source kind: {cfg.kind})")
        if cfg.kind == "jsonl":
            records = _from_table(_read_jsonl(path), cfg, str(path), f"{path.stem}-")
        elif cfg.kind == "gsm8k":
            records = _gsm8k(path)
        elif cfg.kind == "parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
            records = _from_table([(0, r) for r in rows], cfg, str(path), f"{path.stem}-")
        else:
            import datasets

            try:
                ds = (datasets.load_from_disk(str(path)) if path.is_dir() and (path / "dataset_info.json").exists()
                      or (path / "dataset_dict.json").exists() else datasets.load_dataset(cfg.path, split=cfg.split))
            except Exception as e:
                raise DataError(f"datasets source {cfg.path!r} (split {cfg.split!r}) could not be loaded: {e}") from None
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[cfg.split]
            records = _from_table([(0, r) for r in ds], cfg, f"{cfg.path}[{cfg.split}]", f"{path.name}-")
    seen: dict[str, int] = {}
    for i, r in enumerate(records):
        if r.prompt_id in seen:
            raise DataError(f"{cfg.path or cfg.task}: duplicate prompt id {r.prompt_id!r} (records {seen[r.prompt_id]} "
                            f"and {i}). Ids must be unique; map another column to role 'id' or drop duplicates.")
        seen[r.prompt_id] = i
    if cfg.dedupe:
        seen_text: set[str] = set()
        unique = []
        for r in records:
            if r.prompt not in seen_text:
                seen_text.add(r.prompt)
                unique.append(r)
        records = unique
    end = None if cfg.size is None else cfg.offset + cfg.size
    if cfg.size is not None and len(records) < end:
        print(f"[prompts] note: {cfg.path or cfg.task} has {len(records)} record(s) after dedupe; asked for "
              f"offset {cfg.offset} + size {cfg.size}", file=__import__("sys").stderr)
    return records[cfg.offset:end]
