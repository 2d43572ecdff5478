"""Imports flow one way: base -> stages in pipeline order -> eval -> orchestrators. No cycles, no `eval` module.

The graph is read with `ast` from every module of the two packages, counting imports anywhere in a module (inside
functions too: a lazy import is still a dependency). Layers, lowest first (a module may import its own layer and
those below):

    0 base           workbench (package), config, errors, models, tiny_models, logprobs, store.*, losses.*,
                     time_limit
    1 generation     workbench.generation.*
    2 verifiers      workbench.verifiers.*
    3 data           workbench.data.*
    4 training       workbench.training.*
    5 eval           workbench_eval.*  (the folder eval/, installed under that name)
    6 orchestrators  workbench.cli, jobs, loop, quickstart, quickstart_report, __main__
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

LAYERS = [
    ("base", ("workbench", "workbench.config", "workbench.errors", "workbench.models", "workbench.tiny_models",
              "workbench.logprobs", "workbench.store", "workbench.losses", "workbench.time_limit")),
    ("generation", ("workbench.generation",)),
    ("verifiers", ("workbench.verifiers",)),
    ("data", ("workbench.data",)),
    ("training", ("workbench.training",)),
    ("eval", ("workbench_eval",)),
    ("orchestrators", ("workbench.cli", "workbench.jobs", "workbench.loop", "workbench.quickstart",
                       "workbench.quickstart_report", "workbench.__main__")),
]


def modules() -> dict[str, Path]:
    out = {}
    for folder, name in (("workbench", "workbench"), ("eval", "workbench_eval")):
        for f in sorted((REPO / folder).rglob("*.py")):
            parts = list(f.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([name, *parts])] = f
    return out


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    assert rank is not None, f"{module} is in no layer: add it to LAYERS"
    return rank


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The known modules ``name`` imports (the longest known prefix of each imported name)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


@pytest.fixture(scope="module")
def graph():
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_no_import_cycles(graph):
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_imports_flow_down_the_layers(graph):
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
              for m, deps in graph.items() for d in deps if layer_of(d) > layer_of(m)]
    assert not upward, "imports that flow upward:\n" + "\n".join(sorted(upward))


def test_nothing_imports_a_module_named_eval():
    offenders = []
    for folder in ("workbench", "eval", "tests", "benchmarks", "scripts"):
        for f in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text(), str(f))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                if any(n == "eval" or n.startswith("eval.") for n in names):
                    offenders.append(f"{f.relative_to(REPO)}:{node.lineno}")
    assert not offenders, f"`eval` is installed as `workbench_eval`; these import `eval`: {offenders}"


def test_the_checker_sees_a_planted_cycle_and_an_upward_import(tmp_path):
    """Negative control: the two checks above fail on a tree that breaks the rules."""
    (tmp_path / "a.py").write_text("from workbench.b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    import workbench.a\n")
    known = {"workbench.a", "workbench.b"}
    g = {"workbench.a": imports("workbench.a", tmp_path / "a.py", known),
         "workbench.b": imports("workbench.b", tmp_path / "b.py", known)}
    assert g == {"workbench.a": {"workbench.b"}, "workbench.b": {"workbench.a"}}  # a cycle, the lazy import counted
    assert layer_of("workbench.store.shards") < layer_of("workbench.generation.rollouts") < layer_of(
        "workbench.verifiers.job") < layer_of("workbench.data.pairs") < layer_of("workbench.training.preference") < \
        layer_of("workbench_eval.reasoning") < layer_of("workbench.loop")
