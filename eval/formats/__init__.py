"""Retrieval dataset formats: one module per ``dataset.kind``, the module's name is the kind.

Each module defines ``check(cfg)`` (raise ValueError on a config it cannot load: recipe time), ``label(cfg)`` (what
the report calls the data set) and ``load(cfg) -> RetrievalData`` (:mod:`.base`). :data:`NAMES` is read from the file
names, so the recipe schema knows every format, and **adding a format is one new file here** (plus its test).
"""

from __future__ import annotations

import importlib
import pkgutil

NAMES: tuple[str, ...] = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base"))


def get(kind: str):
    return importlib.import_module(f"{__name__}.{kind}")
