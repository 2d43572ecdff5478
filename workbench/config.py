"""Recipes: YAML files mapped onto typed config sections, strictly.

A recipe is a YAML mapping whose top-level ``job`` key names the dataclass it maps onto (``JOBS`` below).
Every key is checked against the dataclass fields, recursively:

* an unknown key fails with the file, the line, the key path and the nearest valid key ("did you mean");
* a value of the wrong type fails with the expected type;
* ``key.sub=value`` overrides (command line) are applied before validation, values parsed as YAML scalars.

Stages register their config class with :func:`register_job`; this module knows nothing about any stage (it is the
base layer): :func:`workbench.jobs.load_recipe` imports every stage, then parses.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path

from workbench.errors import WorkbenchError
from typing import Any, Literal, Union, get_args, get_origin

import yaml

__all__ = ["RecipeError", "register_job", "JOBS", "parse_recipe", "parse_overrides", "to_dict", "build", "dump_yaml"]


class RecipeError(WorkbenchError, ValueError):
    """A recipe (or an override) does not match its schema. The message says where and how to fix it."""


JOBS: dict[str, type | dict[str, type]] = {}


def register_job(name: str, method: str | None = None):
    """Class decorator: ``@register_job("rollouts")`` makes ``job: rollouts`` recipes map onto the class.

    Jobs with several methods, each with its own schema (``job: train`` with ``method: dpo|hypo|grpo|listwise``),
    register one class per method: ``@register_job("train", method="dpo")``.
    """

    def deco(cls):
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass")
        if method is None:
            JOBS[name] = cls
        else:
            JOBS.setdefault(name, {})[method] = cls
        return cls

    return deco


# ----------------------------------------------------------------------------------------------- YAML with line numbers


def _line_map(text: str) -> dict[tuple, int]:
    """Map each key path, e.g. ('generation', 'temperature'), to its 1-based line in the YAML text."""
    lines: dict[tuple, int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = path + (str(k.value),)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[path + (i,)] = v.start_mark.line + 1
                walk(v, path + (i,))

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def read_yaml(path: str | Path) -> tuple[dict, dict[tuple, int]]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        from workbench.store.files import utf8_error

        lineno = raw.count(b"\n", 0, e.start) + 1
        start = raw.rfind(b"\n", 0, e.start) + 1
        line = raw[start:raw.find(b"\n", e.start) if b"\n" in raw[e.start:] else len(raw)]
        raise RecipeError(str(utf8_error(path, lineno, line, UnicodeDecodeError(
            e.encoding, line, e.start - start, e.end - start, e.reason)))) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a YAML mapping (key: value), got {type(data).__name__}")
    return data, _line_map(text)


# ----------------------------------------------------------------------------------------------- overrides


def parse_overrides(items: list[str]) -> list[tuple[list[str], Any]]:
    out = []
    for item in items:
        if "=" not in item:
            raise RecipeError(f"override {item!r}: expected key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not p for p in key.split(".")):
            raise RecipeError(f"override {item!r}: empty key part")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        out.append((key.split("."), value))
    return out


def apply_overrides(data: dict, overrides: list[tuple[list[str], Any]]) -> dict:
    for parts, value in overrides:
        node = data
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise RecipeError(f"override {'.'.join(parts)}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = value
    return data


# ----------------------------------------------------------------------------------------------- typed building


def _type_name(tp) -> str:
    origin = get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list[{_type_name(args[0]) if args else 'any'}]"
    if origin is dict:
        k, v = get_args(tp) or (str, Any)
        return f"mapping of {_type_name(k)} -> {_type_name(v)}"
    if dataclasses.is_dataclass(tp):
        return f"section ({tp.__name__})"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


class _Ctx:
    def __init__(self, source: str, lines: dict[tuple, int], overridden: list[tuple] = ()):
        self.source, self.lines, self.overridden = source, lines, list(overridden)

    def where(self, path: tuple) -> str:
        for o in self.overridden:
            if tuple(path[:len(o)]) == o:
                return f"{self.source} (command-line override {'.'.join(o)}=...)"
        p = path
        while p and p not in self.lines:
            p = p[:-1]
        line = self.lines.get(p)
        return f"{self.source}:{line}" if line else self.source

    def fail(self, path: tuple, msg: str):
        key = ".".join(str(p) for p in path) or "<top level>"
        raise RecipeError(f"{self.where(path)}: {key}: {msg}")


def _convert(value, tp, path: tuple, ctx: _Ctx):
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in get_args(tp):
            close = difflib.get_close_matches(str(value), [str(a) for a in get_args(tp)], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            ctx.fail(path, f"expected one of {_type_name(tp)}, got {value!r}{hint}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            ctx.fail(path, f"expected {_type_name(tp)}, got null")
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, path, ctx)
            except RecipeError as e:
                errors.append(str(e))
        if len(errors) == 1:
            raise RecipeError(errors[0])
        ctx.fail(path, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            ctx.fail(path, f"expected a {_type_name(tp)} mapping, got {type(value).__name__} {value!r}")
        return _build(tp, value, path, ctx)
    if origin in (list, tuple):
        (item_tp,) = get_args(tp)[:1] or (Any,)
        if not isinstance(value, list):
            ctx.fail(path, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        return [_convert(v, item_tp, path + (i,), ctx) for i, v in enumerate(value)]
    if origin is dict:
        kt, vt = get_args(tp) or (str, Any)
        if not isinstance(value, dict):
            ctx.fail(path, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        return {_convert(k, kt, path + (k,), ctx): _convert(v, vt, path + (k,), ctx) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            ctx.fail(path, f"expected bool (true/false), got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            ctx.fail(path, f"expected int, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML 1.1 reads 1e-5 (no dot) as a string: accept numeric strings for floats.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            ctx.fail(path, f"expected float, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            ctx.fail(path, f"expected str, got {type(value).__name__} {value!r}")
        return value
    return value


def _migrate(cls, data: dict, path: tuple, ctx: _Ctx) -> dict:
    """Apply a section's renamed keys (``RENAMED = {old: new}`` on the dataclass), with a deprecation warning.

    ``new`` is a dotted key inside the same section (``"kl_coef"``, ``"options.mu"``), or ``"."``: the old key was a
    nested section whose keys now sit in this one (``grpo.grpo.beta`` -> ``grpo.beta``). The old spelling keeps
    working for one release; a recipe that gives both spellings is an error.
    """
    renamed = getattr(cls, "RENAMED", None)
    if not renamed or not any(k in data for k in renamed):
        return data
    data = dict(data)
    for old, new in renamed.items():
        if old not in data:
            continue
        value = data.pop(old)
        old_key = ".".join(map(str, path + (old,)))
        if new == ".":
            if not isinstance(value, dict):
                ctx.fail(path + (old,), f"expected a mapping (deprecated nesting), got {type(value).__name__}")
            clash = sorted(set(value) & set(data))
            if clash:
                ctx.fail(path + (old,), f"{clash} given both under {old_key} (deprecated) and directly; keep one")
            data.update(value)
            hint = f"move its keys up one level (e.g. {old_key}.X -> {'.'.join(map(str, path + ('X',)))})"
        else:
            *parents, leaf = new.split(".")
            node = data
            for part in parents:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    ctx.fail(path + (part,), f"expected a mapping, got {type(node).__name__}")
            if leaf in node:
                ctx.fail(path + (old,), f"given both as {old_key} (deprecated) and as the new key; keep the new one")
            node[leaf] = value
            hint = f"use {'.'.join(map(str, path + (new,)))}"
        import warnings

        warnings.warn(f"{ctx.where(path + (old,))}: {old_key} is deprecated and will be removed in 0.3: {hint}",
                      FutureWarning, stacklevel=2)
    return data


def _build(cls, data: dict, path: tuple, ctx: _Ctx):
    data = _migrate(cls, data, path, ctx)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f" Did you mean {'.'.join(map(str, path + (close[0],)))!r}?" if close else ""
            valid = ", ".join(sorted(fields))
            ctx.fail(path + (key,), f"unknown key.{hint} Valid keys here: {valid}")
        kwargs[key] = _convert(value, hints[key], path + (key,), ctx)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        ctx.fail(path, f"missing required key(s): {', '.join(missing)}")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except (ValueError, TypeError) as e:
            ctx.fail(path, str(e))
    return obj


def build(cls, data: dict, source: str = "<config>", lines: dict | None = None):
    """Build a dataclass from a plain mapping, strictly (used for recipes and for sub-configs made in code)."""
    return _build(cls, data, (), _Ctx(source, lines or {}))


def parse_recipe(path: str | Path, overrides: list[str] | None = None, job: str | None = None):
    """Load a recipe file onto its registered config class. ``job`` (if given) must match the recipe's ``job``.

    Only the job classes registered so far are known: the base imports no stage. Call
    :func:`workbench.jobs.load_recipe`, which registers every stage first.
    """
    data, lines = read_yaml(path)
    parsed = parse_overrides(overrides or [])
    apply_overrides(data, parsed)
    ctx = _Ctx(str(path), lines, [tuple(p) for p, _ in parsed])
    name = data.get("job")
    if name is None:
        ctx.fail((), f"missing top-level 'job' key; one of: {', '.join(sorted(JOBS))}")
    if name not in JOBS:
        close = difflib.get_close_matches(str(name), list(JOBS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        ctx.fail(("job",), f"unknown job {name!r}.{hint} Known jobs: {', '.join(sorted(JOBS))}")
    if job is not None and name != job:
        ctx.fail(("job",), f"this command runs '{job}' recipes, but the recipe says job: {name}")
    cls = JOBS[name]
    if isinstance(cls, dict):
        method = data.get("method")
        if method not in cls:
            close = difflib.get_close_matches(str(method), list(cls), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            ctx.fail(("method",), f"job {name} needs `method`, one of {', '.join(sorted(cls))}; got {method!r}.{hint}")
        cls = cls[method]
    return _build(cls, data, (), ctx)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)
