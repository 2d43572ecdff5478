"""`workbench quickstart`: the whole workbench on the embedded defaults, offline, on one CPU.

Orchestration only: the quickstart runs the recipes in ``recipes/quickstart/`` in order, each through its normal
stage (the same thing `workbench <stage> --config recipes/quickstart/<file>` does), with every
``runs/quickstart/...`` path moved under ``--out``. Change a model, a dataset or a size in those recipes and rerun
any stage by hand; the quickstart picks up what is already finished (each stage's run folder is resumable), so a
killed quickstart resumes where it stopped.

* policy half: SmolLM2 rollouts on reasoning-gym products -> math verifier -> pairs -> DPO and HyPO (LoRA) ->
  base vs DPO vs HyPO on held-out prompts (accuracy, KL to the base model, mean length);
* retrieval half: SyCL graded documents for SciFact-nano train claims -> label calibration by the judge ->
  MiniLM trained with ws2 and with infonce -> nDCG@10 / Recall@100 on held-out claims for MiniLM, BM25, ws2, infonce;
* ``report.md`` + PNG plots comparing everything, stating where a method did not help.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from workbench.errors import WorkbenchError

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes" / "quickstart"
PACKAGE_DATA = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Step:
    part: str  # policy | retrieval
    name: str  # also the recipe file stem and the run folder name
    command: str  # the stage runner: rollouts, verify, pairs, train, eval_reasoning, documents, lists, eval_retrieval
    expected_seconds: float  # measured on the 2-core reference machine, for the time-remaining estimate


STEPS = [
    Step("policy", "policy_rollouts", "rollouts", 40),
    Step("policy", "policy_verify", "verify", 8),
    Step("policy", "policy_pairs", "pairs", 6),
    Step("policy", "policy_dpo", "train", 80),
    Step("policy", "policy_hypo", "train", 140),
    Step("policy", "policy_eval_base", "eval_reasoning", 45),
    Step("policy", "policy_eval_dpo", "eval_reasoning", 55),
    Step("policy", "policy_eval_hypo", "eval_reasoning", 55),
    Step("retrieval", "retrieval_documents", "documents", 80),
    Step("retrieval", "retrieval_lists", "lists", 130),
    Step("retrieval", "retrieval_train_ws2", "train", 60),
    Step("retrieval", "retrieval_train_infonce", "train", 50),
    Step("retrieval", "retrieval_eval_minilm", "eval_retrieval", 30),
    Step("retrieval", "retrieval_eval_bm25", "eval_retrieval", 10),
    Step("retrieval", "retrieval_eval_ws2", "eval_retrieval", 30),
    Step("retrieval", "retrieval_eval_infonce", "eval_retrieval", 30),
]


# `--reduced`: tiny sizes on the same real models, for the end-to-end test (minutes, not a result worth reading).
REDUCED = {
    "policy_rollouts": ["prompts.size=6", "sampling.n=2", "sampling.max_tokens=24"],
    "policy_dpo": ["optim.max_steps=2", "optim.save_steps=1"],
    "policy_hypo": ["optim.max_steps=2", "optim.save_steps=1", "hypo.max_new_tokens=8"],
    "policy_eval_base": ["task.size=4", "sampling.max_tokens=24"],
    "policy_eval_dpo": ["task.size=4", "sampling.max_tokens=24"],
    "policy_eval_hypo": ["task.size=4", "sampling.max_tokens=24"],
    "retrieval_documents": ["queries.size=3", "sampling.max_tokens=24"],
    "retrieval_train_ws2": ["optim.max_steps=2", "optim.save_steps=1"],
    "retrieval_train_infonce": ["optim.max_steps=2", "optim.save_steps=1"],
}


def _relocate(data, out: Path):
    """Rewrite runs/quickstart/... paths under ``out`` and workbench/data/... paths to the installed package data."""
    if isinstance(data, dict):
        return {k: _relocate(v, out) for k, v in data.items()}
    if isinstance(data, list):
        return [_relocate(v, out) for v in data]
    if isinstance(data, str) and data.startswith("runs/quickstart/"):
        return str(out / data[len("runs/quickstart/"):])
    if isinstance(data, str) and data.startswith("workbench/data/"):
        return str(PACKAGE_DATA / data[len("workbench/data/"):])
    return data


def stage_overrides(stage: Step, out: Path, reduced: bool = False) -> list[str]:
    """key=value overrides that move the recipe's paths (and, with ``reduced``, shrink its sizes)."""
    path = RECIPES / f"{stage.name}.yaml"
    if not path.exists():
        raise WorkbenchError(f"{path}: quickstart recipe missing (the quickstart runs from a checkout of the repo)")
    raw = _flatten(yaml.safe_load(path.read_text()))
    moved = _flatten(_relocate(yaml.safe_load(path.read_text()), out))
    overrides = [f"{k}={json.dumps(v)}" for k, v in moved.items() if raw.get(k) != v]
    return overrides + (REDUCED.get(stage.name, []) if reduced else [])


def load_stage_config(stage: Step, out: Path, reduced: bool = False):
    """The stage's recipe with its overrides, through the same strict loader the CLI uses."""
    from workbench.jobs import load_recipe

    return load_recipe(RECIPES / f"{stage.name}.yaml", stage_overrides(stage, out, reduced))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def stage_command(stage: Step, out: Path, reduced: bool = False) -> list[str]:
    """The exact `workbench ...` command line for a stage: its recipe plus the relocation (and reduction) overrides.

    Each stage runs in its own process, as a user would run it: its vLLM engine and models are released when it
    ends, so peak memory is the largest stage's, not the sum of all of them.
    """
    from workbench.store.runs import command_words

    load_stage_config(stage, out, reduced)  # validate first: a bad recipe fails before anything runs
    return [sys.executable, "-m", "workbench", *command_words(stage.command), "--config",
            str(RECIPES / f"{stage.name}.yaml"), *stage_overrides(stage, out, reduced)]

def _done(out: Path, stage: Step) -> bool:
    p = out / stage.name / "run.json"
    return p.exists() and json.loads(p.read_text()).get("status") == "done"


def run(out: str | Path = "runs/quickstart", part: str = "all", reduced: bool = False) -> Path:
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stages = [s for s in STEPS if part in ("all", s.part)]
    timings_file = out / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    t_start = time.perf_counter()
    for n, stage in enumerate(stages, 1):
        remaining = sum(s.expected_seconds for s in stages[n - 1:] if not _done(out, s))
        elapsed = time.perf_counter() - t_start
        status = "done earlier, kept" if _done(out, stage) else f"running; about {remaining / 60:.1f} min left"
        print(f"\n=== quickstart [{n}/{len(stages)}] {stage.name} ({stage.command}) | elapsed {elapsed / 60:.1f} min "
              f"| {status} ===", file=sys.stderr, flush=True)
        if _done(out, stage):
            continue
        import subprocess

        cmd = stage_command(stage, out, reduced)
        t0 = time.perf_counter()
        code = subprocess.call(cmd)
        if code != 0:
            raise WorkbenchError(f"quickstart stage {stage.name} failed (exit {code}). Fix the cause above and rerun "
                                 f"`workbench quickstart`: finished stages are kept. The stage alone: "
                                 f"{' '.join(cmd[2:])}")
        timings[stage.name] = round(time.perf_counter() - t0, 1)
        from workbench.store.files import atomic_write

        atomic_write(timings_file, json.dumps(timings, indent=2))
    from workbench.quickstart_report import write_report

    path = write_report(out, [s.name for s in stages], timings)
    print(f"\n[quickstart] done in {(time.perf_counter() - t_start) / 60:.1f} min this run -> {path}", file=sys.stderr)
    return path
