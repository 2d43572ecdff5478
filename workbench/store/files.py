"""Files: atomic writes, and reading the user's text files with errors that name the file and line.

:func:`atomic_write` writes through a temp file and a rename, so a reader (or a killed writer) never sees half a
file. :func:`read_lines` decodes line by line, so a file that is not UTF-8 fails naming the line and byte, not with a
``UnicodeDecodeError`` traceback from deep inside a library; :func:`read_jsonl` builds on it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from workbench.errors import DataError


def utf8_error(path, lineno: int, raw: bytes, e: UnicodeDecodeError) -> DataError:
    return DataError(f"{path}:{lineno}: not valid UTF-8 (byte {e.start + 1} of the line is "
                     f"{raw[e.start:e.start + 1]!r}). Save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8).")


def read_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line number, text without the newline)`` for every line of a UTF-8 text file."""
    path = Path(path)
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise utf8_error(path, lineno, raw, e) from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not part of the first field
            yield lineno, line.rstrip("\r\n")


def read_jsonl(path: str | Path, what: str = "a JSON object") -> list[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line; a bad line fails naming ``path:line``."""
    path = Path(path)
    rows = []
    for lineno, line in read_lines(path):
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


def atomic_write(path: Path, text: str) -> None:
    """Write via a temp file and rename, so a reader (or a killed writer) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
