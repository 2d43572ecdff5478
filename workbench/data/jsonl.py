"""JSON Lines reading with errors that name the file and line: the one reader every stage uses."""

from __future__ import annotations

import json
from pathlib import Path

from workbench.errors import DataError


def read_jsonl(path: str | Path, what: str = "a JSON object") -> list[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line; a bad line fails naming ``path:line``."""
    path = Path(path)
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}). "
                                "Each line of a JSONL file must be one JSON object.") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected {what}, got {type(obj).__name__}")
            rows.append((lineno, obj))
    return rows
