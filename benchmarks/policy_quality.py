"""Does training on verified data make SmolLM2 better, and does HyPO stay closer to the base? Built in units.

    python benchmarks/policy_quality.py status            # every unit: done / to do, minutes (measured or estimated)
    python benchmarks/policy_quality.py run [--priority 2] [--only UNIT ...] [--max-minutes M] [--commit]
    python benchmarks/policy_quality.py report            # aggregate -> benchmarks/results/policy_quality.json + plots
    python benchmarks/policy_quality.py run --quick       # a small plan (3 units, about 15 min) into runs/, no records

A **unit** is one (method, setting, seed): train, then evaluate. Each unit writes its own record,
``benchmarks/results/policy_quality/<unit>.json``, holding its config hash, the training summary and the per-prompt
outcomes every statistic is computed from (as MTEB writes one file per model and task). ``run`` takes the units in
priority order and skips a unit whose record exists with the same config hash, so a stopped run loses at most the
unit in progress, and each job inside a unit resumes from its own shards and checkpoints. ``--commit`` commits each
record as soon as it is written.

Run nothing else beside a unit: on 2 cores a test run next to DPO training made its steps 5x slower (OMP threads
spin-waiting), and the unit's minutes, which the plan is budgeted by, then mean nothing. Each job runs as a child
process; start the driver with ``setsid`` and stop it with ``kill -- -<pgid>`` so that its current job stops too
(a job killed anywhere resumes on the next ``run``).

The task, chosen after measuring the base model (4 samples at T=0.7, 64 tokens, 100 prompts each, on a 2-core
AVX2 EPYC): products with 1-2 digit factors 13.8%; basic_arithmetic with two 1-2 digit terms and + - * / 10.8%;
+ and - only 18.8%, or 20.5% with ``TEMPLATE``; + only is the one inside the issue's 20-60% band:

* training prompts: reasoning-gym ``basic_arithmetic``, two 1-2 digit terms, ``+`` (1,200 distinct problems);
* held-out: 320 other problems, disjoint *by problem*: ``a + b`` and ``b + a`` are one problem (the key is the
  sorted operands), so no held-out problem is a training problem written the other way round;
* transfer, to measure forgetting: reasoning-gym ``products`` with 1-2 digit factors, 300 problems.

Data (rollouts -> math verifier -> best-vs-worst pairs) is built once per seed under ``runs/policy_quality/data``
and reused by every unit of that seed; with the same seed on the same machine it is byte-identical (the unit record
keeps the pairs' sha256, and a unit refuses data whose hash differs from the one its seed's other records saw).

Metrics per unit, all on every held-out problem: greedy accuracy; accuracy, pass@4 and maj@4 from 4 samples at
T=0.7; the exact reverse KL to the base model (T=1 samples, float32, both models scoring the sampled token ids) on the
first 100 held-out prompts x 2 samples; transfer greedy accuracy and mean completion length.

The report compares paired, prompt by prompt, with seeds pooled per prompt and a cluster bootstrap over prompts
(``workbench_eval.stats``), and says for each goal of the issue whether the records meet it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import ROOT, begin, write_record  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
UNIT_RECORDS = RESULTS / "policy_quality"
# Where the jobs' run folders go. $WORKBENCH_PQ_WORK moves them, so that units can run from a pinned worktree of a
# commit (records then name that commit, clean) while the run folders stay where earlier units left them.
WORK = Path(os.environ.get("WORKBENCH_PQ_WORK") or ROOT / "runs" / "policy_quality")
MODEL = "smollm2-135m-instruct"
# The products-style instruction: with the workbench's default "{prompt}\nGive the final answer after ####." SmolLM2
# rambles past 64 tokens on a third of these prompts (measured: 18.8% correct), with this one 20.5% on + and -.
TEMPLATE = "{prompt} Give only the result as your final answer, after ####."

# ------------------------------------------------------------------------------------------------ the task

TASK = {
    "train": {"task": "basic_arithmetic", "seed": 20261208, "size": 1200,
              "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2, "operators": ["+"],
                         "allow_parentheses": False, "allow_negation": False}},
    "heldout_size": 320,
    "transfer": {"task": "products", "seed": 99, "size": 300, "config": {"min_digits": 1, "max_digits": 2}},
}
QUICK_TASK = {**TASK, "heldout_size": 120, "transfer": {**TASK["transfer"], "size": 100}}

BACKEND = {"backend": "auto", "cpu_kv_cache_gib": 1, "max_model_len": 1024}
MAX_TOKENS = 64  # SmolLM2's answers to these prompts average about 30 tokens; 64 truncates few
EVAL = {"samples": 4, "temperature": 0.7, "kl_prompts": 100, "kl_samples": 2}
QUICK_EVAL = {**EVAL, "kl_prompts": 40}


def problem_key(question: str) -> str:
    """Two questions that ask the same thing share a key: ``a + b`` is ``b + a`` and ``a * b`` is ``b * a`` (the key is
    the sorted operands), ``a - b`` is only itself. Any other question is its own key."""
    m = re.search(r"(-?\d+) ([-+*]) (-?\d+)", question)
    if m is None:
        return question
    a, op, b = m.groups()
    if op in "+*":
        a, b = sorted((a, b), key=int)
    return f"{a}{op}{b}"


def _distinct(task: str, config: dict, seed: int, need: int, exclude: set[str] = frozenset()) -> list[dict]:
    import reasoning_gym

    size = need * 4
    while True:
        ds = reasoning_gym.create_dataset(task, size=size, seed=seed, **config)
        seen, out = set(exclude), []
        for i in range(len(ds)):
            q, a = ds[i]["question"], ds[i]["answer"]
            key = problem_key(q)
            if key in seen:
                continue
            seen.add(key)
            out.append({"id": f"{task}-{seed}-{i}", "prompt": q, "reference": str(a), "key": key})
            if len(out) == need:
                return out
        if size > need * 64:
            raise SystemExit(f"{task} {config}: only {len(out)} distinct problems in {size} draws; need {need}")
        size *= 4


def build_prompts(task: dict, folder: Path) -> dict[str, str]:
    """train / heldout / transfer JSONL files, disjoint by problem key; returns their sha256 (part of every unit's
    config hash, so a change of the task invalidates every record)."""
    t = task["train"]
    both = _distinct(t["task"], t["config"], t["seed"], task["heldout_size"] + t["size"])
    heldout, train = both[:task["heldout_size"]], both[task["heldout_size"]:]
    assert not {r["key"] for r in heldout} & {r["key"] for r in train}
    x = task["transfer"]
    transfer = _distinct(x["task"], x["config"], x["seed"], x["size"])
    folder.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, rows in (("train", train), ("heldout", heldout), ("transfer", transfer)):
        text = "".join(json.dumps({k: r[k] for k in ("id", "prompt", "reference")}) + "\n" for r in rows)
        path = folder / f"{name}.jsonl"
        if not path.exists() or path.read_text() != text:  # never rewrite a file a running job may be reading
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_text(text)
            os.replace(tmp, path)
        hashes[name] = hashlib.sha256(text.encode()).hexdigest()
    return hashes


# ------------------------------------------------------------------------------------------------ the units

DATA = {"rollout_prompts": 320, "n": 4, "temperature": 0.7, "max_tokens": MAX_TOKENS,
        "pairs": {"strategy": "best_vs_worst", "margin": 0.5, "max_pairs_per_prompt": 1}}
QUICK_DATA = {**DATA, "rollout_prompts": 160}

LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
# Every preference method gets the same optimisation budget: the same steps, batch, learning rate and LoRA.
# Measured on the 2-core AVX2 machine: a DPO step of 8 pairs takes about 21 s (fwd + bwd in float32 plus the reference
# forward), so 40 steps alone would take 14 min and the unit over 25. Fewer steps at a higher rate instead (the
# issue's order: make a run cheaper before splitting it): 20 steps of 8 pairs, about 1.5 epochs of ~110 pairs.
PREF_OPTIM = {"max_steps": 20, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
              "learning_rate": 2.0e-4, "save_steps": 5, "warmup_steps": 0.1}
# The rest of each method's recipe, fixed across the plan (hashed, so changing one marks its units stale).
DPO_FIXED = {"max_length": 256}
HYPO_FIXED = {"k": 2, "sampler": "auto", "sync_every": 1, "max_new_tokens": 48, "vllm_max_model_len": 512}
GRPO_FIXED = {"num_generations": 4, "max_completion_length": 48, "temperature": 1.0}
VERIPO_FIXED = {"prompts": 300, "grpo_steps": 15, "dpo_steps": 15, "beta": 0.1}
GRPO_OPTIM = {"max_steps": 40, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
              "learning_rate": 1.0e-4, "save_steps": 10, "warmup_steps": 0.1}


@dataclass
class Unit:
    name: str
    method: str  # base | dpo | hypo | grpo | veripo
    setting: dict
    seed: int
    priority: int
    estimate_min: float
    label: str = ""  # the method-and-setting name the report groups seeds under
    train: dict = field(default_factory=dict)


def plan(quick: bool = False) -> list[Unit]:
    units: list[Unit] = []

    def add(method, setting, seeds, priority, minutes, label):
        for s in seeds:
            tag = "-".join(f"{k}{v}" for k, v in setting.items())
            units.append(Unit(f"{method}{'-' + tag if tag else ''}-s{s}", method, setting, s, priority, minutes,
                              label))

    if quick:
        add("base", {}, [0], 1, 3, "base")
        add("dpo", {"beta": 0.1}, [0], 1, 6, "DPO b=0.1")
        add("hypo", {"beta": 0.1, "lam": 0.5}, [0], 1, 6, "HyPO l=0.5")
        return units
    # Estimates in minutes on the 2-core AVX2 machine, unloaded: eval 10 (320 held-out greedy + 4 samples + the KL pass
    # on 100 + 300 transfer), DPO's data 6 (the first unit of a seed builds it) and training 7.5 (20 steps of 22 s).
    for s in (0, 1):  # priority 1, seed-major: after the first three units one seed of every method exists
        add("base", {}, [s], 1, 10, "base")
        add("dpo", {"beta": 0.1}, [s], 1, 24, "DPO b=0.1")
        add("hypo", {"beta": 0.1, "lam": 0.5}, [s], 1, 25, "HyPO l=0.5")
    add("grpo", {}, [0, 1], 2, 22, "GRPO")
    add("hypo", {"beta": 0.1, "lam": 2.0}, [0, 1], 3, 25, "HyPO l=2")
    add("dpo", {"beta": 0.5}, [0, 1], 3, 20, "DPO b=0.5")
    add("base", {}, [2], 4, 10, "base")
    add("dpo", {"beta": 0.1}, [2], 4, 24, "DPO b=0.1")
    add("hypo", {"beta": 0.1, "lam": 0.5}, [2], 4, 25, "HyPO l=0.5")
    add("grpo", {}, [2], 4, 22, "GRPO")
    add("veripo", {"iterations": 2}, [0], 5, 25, "VerIPO loop")
    return units


# ------------------------------------------------------------------------------------------------ running jobs


def run_job(command: str, cfg: dict, folder: Path, log: Path) -> None:
    """One workbench job as a user runs it: its recipe written to ``folder/<run>.yaml``, then ``python -m workbench``.
    Jobs resume, so rerunning after a kill continues where the job stopped."""
    import yaml

    from workbench.store.runs import command_words

    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / f"{cfg['run_name']}.yaml"
    recipe.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "workbench", *command_words(command), "--config", str(recipe)]
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    if code != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"{command} for {folder.name} failed (exit {code}); log {log}:\n{tail}")


def _done(run_dir: Path) -> bool:
    p = run_dir / "run.json"
    return p.exists() and json.loads(p.read_text()).get("status") == "done"


def _sha256_rows(folder: Path) -> str:
    """The pairs' content hash: every shard's rows in order (the parquet bytes could differ by writer metadata)."""
    from workbench.store.shards import read_rows

    h = hashlib.sha256()
    for r in read_rows(folder):
        h.update(json.dumps(r, sort_keys=True, default=str).encode())
    return h.hexdigest()


def build_data(seed: int, work: Path, data: dict, log: Path) -> dict:
    """Rollouts -> verify -> pairs for one seed, cached: a finished stage is kept."""
    d = work / "data" / f"seed{seed}"
    prompts = work / "prompts" / "train.jsonl"
    if not _done(d / "rollouts"):
        run_job("rollouts", {
            "job": "rollouts", "run_name": "rollouts", "output_dir": str(d / "rollouts"), "seed": seed, "model": MODEL,
            "prompts": {"kind": "jsonl", "path": str(prompts), "size": data["rollout_prompts"]},
            "template": TEMPLATE, "backend": BACKEND,
            "sampling": {"n": data["n"], "temperature": data["temperature"], "max_tokens": data["max_tokens"],
                         "seed": seed}}, d, log)
    if not _done(d / "verify"):
        run_job("verify", {"job": "verify", "run_name": "verify", "output_dir": str(d / "verify"),
                           "input_dir": str(d / "rollouts"), "verifier": {"name": "math"}}, d, log)
    if not _done(d / "pairs"):
        run_job("pairs", {"job": "pairs", "run_name": "pairs", "output_dir": str(d / "pairs"), "seed": seed,
                          "input_dir": str(d / "verify"), **data["pairs"]}, d, log)
    verify = json.loads((d / "verify" / "verdicts" / "manifest.json").read_text())["stats"]
    counts = json.loads((d / "pairs" / "pairs" / "counts.json").read_text())
    return {"path": str(d / "pairs"), "pairs_sha256": _sha256_rows(d / "pairs" / "pairs"),
            "rollouts_sha256": _sha256_rows(d / "rollouts" / "rollouts"), "verify": verify, "pairs": counts}


def train_config(unit: Unit, data_path: str, out: Path, work: Path) -> tuple[str, dict] | None:
    s = unit.setting
    common = {"run_name": "train", "output_dir": str(out), "seed": unit.seed, "model": MODEL, "lora": LORA}
    if unit.method == "dpo":
        return "train", {"job": "train", "method": "dpo", **common, "data": {"path": data_path}, "optim": PREF_OPTIM,
                         "dpo": {"beta": s["beta"], **DPO_FIXED}}
    if unit.method == "hypo":
        hypo = {k: v for k, v in HYPO_FIXED.items() if k != "vllm_max_model_len"}
        vllm_len = HYPO_FIXED["vllm_max_model_len"]
        return "train", {"job": "train", "method": "hypo", **common, "data": {"path": data_path},
                         "optim": PREF_OPTIM, "dpo": {"beta": s["beta"], **DPO_FIXED},
                         "hypo": {"kl_coef": s["lam"], **hypo, "vllm": {**BACKEND, "backend": "vllm",
                                                                         "max_model_len": vllm_len}}}
    if unit.method == "grpo":
        return "train", {"job": "train", "method": "grpo", **common, "optim": GRPO_OPTIM,
                         "grpo": {"reward": {"name": "math"}, "template": TEMPLATE, **GRPO_FIXED,
                                  "prompts": {"kind": "jsonl", "path": str(work / "prompts" / "train.jsonl")}}}
    return None


def eval_configs(model: str, folder: Path, seed: int, ev: dict, work: Path) -> dict[str, dict]:
    task = {"name": "jsonl", "path": str(work / "prompts" / "heldout.jsonl"), "template": TEMPLATE}
    transfer = {"name": "jsonl", "path": str(work / "prompts" / "transfer.jsonl"), "template": TEMPLATE}
    base = {"job": "eval_reasoning", "model": model, "seed": seed, "backend": BACKEND}
    return {
        "greedy": {**base, "run_name": "greedy", "output_dir": str(folder / "greedy"), "task": task,
                   "sampling": {"n": 1, "temperature": 0.0, "max_tokens": MAX_TOKENS}, "k": [1]},
        "sampled": {**base, "run_name": "sampled", "output_dir": str(folder / "sampled"), "task": task,
                    "sampling": {"n": ev["samples"], "temperature": ev["temperature"], "max_tokens": MAX_TOKENS,
                                 "seed": seed},
                    "k": [1, ev["samples"]], "reference_model": MODEL,
                    "kl": {"n": ev["kl_samples"], "prompts": ev["kl_prompts"]}},
        "transfer": {**base, "run_name": "transfer", "output_dir": str(folder / "transfer"), "task": transfer,
                     "sampling": {"n": 1, "temperature": 0.0, "max_tokens": MAX_TOKENS}, "k": [1]},
    }


def config_hash(unit: Unit, mode: dict, prompt_hashes: dict) -> str:
    """What decides the unit's outcome, and nothing else: a change to the DPO settings must not invalidate base."""
    relevant = {"task", "eval", "max_tokens", "template", "model", "backend"}
    if unit.method in ("dpo", "hypo"):
        relevant |= {"data", "lora", "pref_optim", "dpo"}
    if unit.method == "hypo":
        relevant |= {"hypo"}
    if unit.method == "grpo":
        relevant |= {"lora", "grpo_optim", "grpo"}
    if unit.method == "veripo":
        relevant |= {"lora", "pref_optim", "grpo_optim", "dpo", "grpo", "veripo"}
    blob = {"unit": {k: getattr(unit, k) for k in ("name", "method", "setting", "seed")},
            "mode": {k: v for k, v in mode.items() if k in relevant}, "prompts": prompt_hashes}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def mode_settings(quick: bool) -> dict:
    return {"task": QUICK_TASK if quick else TASK, "data": QUICK_DATA if quick else DATA, "eval": QUICK_EVAL if quick
            else EVAL, "lora": LORA, "pref_optim": PREF_OPTIM, "grpo_optim": GRPO_OPTIM, "max_tokens": MAX_TOKENS,
            "template": TEMPLATE, "model": MODEL, "backend": BACKEND, "dpo": DPO_FIXED, "hypo": HYPO_FIXED,
            "grpo": GRPO_FIXED, "veripo": VERIPO_FIXED}


def _per_prompt(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _train_summary(run_dir: Path) -> dict:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [r for r in rows if "loss" in r]
    keep = ("loss", "rewards/margins", "rewards/accuracies", "kl/online", "reward", "hypo/gen_time_share")
    last = {k: steps[-1][k] for k in keep if steps and k in steps[-1]}
    first = {k: steps[0][k] for k in keep if steps and k in steps[0]}
    return {"logged_steps": len(steps), "first": first, "last": last}


class _Clock:
    """Each phase's wall time, kept in ``<unit>/timings.json`` across attempts. A phase that an earlier attempt
    finished keeps that attempt's time (a rerun finds its run folder done and spends seconds on it); a phase killed
    midway counts the attempt that finished it. An older record of the unit seeds the file, so a unit re-recorded
    under a new config hash (same jobs, same folders) keeps the times its jobs took."""

    def __init__(self, path: Path, earlier: dict):
        self.path = path
        self.t = json.loads(path.read_text()) if path.exists() else {k: v for k, v in earlier.items() if k != "total"}

    def phase(self, name: str, done_before: bool, fn):
        if done_before and self.t.get(name) is not None:
            return fn()
        t0 = time.perf_counter()
        out = fn()
        self.t[name] = time.perf_counter() - t0
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.t, indent=2))
        os.replace(tmp, self.path)
        return out

    def totals(self) -> dict:
        return {**self.t, "total": sum(v for v in self.t.values() if v is not None)}


def run_unit(unit: Unit, work: Path, settings: dict, prompt_hashes: dict, log_dir: Path,
             records: Path = UNIT_RECORDS) -> dict:
    folder = work / "units" / unit.name
    folder.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{unit.name}.log"
    old = records / f"{unit.name}.json"
    clock = _Clock(folder / "timings.json", json.loads(old.read_text())["results"]["timings_s"] if old.exists()
                   else {})
    data, model, train = None, MODEL, None
    if unit.method in ("dpo", "hypo"):  # shared by the seed's units: the first one pays, later ones find it built
        d = work / "data" / f"seed{unit.seed}"
        built = all(_done(d / s) for s in ("rollouts", "verify", "pairs"))
        data = clock.phase("data", built, lambda: build_data(unit.seed, work, settings["data"], log))
    if unit.method == "veripo":
        model, train = clock.phase("train", _done(folder / "loop"), lambda: run_veripo(unit, folder, work, settings,
                                                                                        log))
    else:
        tc = train_config(unit, data["path"] if data else "", folder / "train", work)
        if tc is not None:
            clock.phase("train", _done(folder / "train"), lambda: run_job(tc[0], tc[1], folder, log))
            model, train = str(folder / "train" / "model"), _train_summary(folder / "train")
    outcomes = {}
    for name, cfg in eval_configs(model, folder, unit.seed, settings["eval"], work).items():
        clock.phase(f"eval_{name}", _done(folder / name), lambda: run_job("eval_reasoning", cfg, folder, log))
        outcomes[name] = _outcomes(folder / name)
    return {"unit": unit.name, "method": unit.method, "label": unit.label, "setting": unit.setting, "seed": unit.seed,
            "priority": unit.priority, "data": data, "train": train, "timings_s": clock.totals(),
            "outcomes": outcomes}


def _outcomes(run_dir: Path) -> dict:
    """Per prompt: what every statistic is computed from (read from the eval's samples, not its summary)."""
    import pyarrow.parquet as pq

    res = _per_prompt(run_dir)
    rows = pq.read_table(run_dir / "samples.parquet").to_pylist()
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["prompt_id"], []).append(r)
    out = {"metrics": res["metrics"], "counts": res["counts"],
           "correct": {p: sum(bool(r["passed"]) for r in rs) for p, rs in sorted(by.items())},
           "samples": {p: len(rs) for p, rs in sorted(by.items())},
           "length": {p: sum(r["num_tokens"] for r in rs) / len(rs) for p, rs in sorted(by.items())},
           "per_query": res.get("per_query", {})}
    if "kl" in res:
        kl = res["kl"]
        out["kl"] = {k: kl.get(k) for k in ("kl", "kl_se", "kl_per_token", "samples", "prompts", "truncated",
                                          "sampler_logprob_gap_max")}
        out["kl_per_prompt"] = kl.get("per_prompt")
    return out


def run_veripo(unit: Unit, folder: Path, work: Path, settings: dict, log: Path) -> tuple[str, dict]:
    """VerIPO's loop (workbench loop): GRPO -> rollouts -> rollout-aware verifier -> pairs -> DPO, twice."""
    cfg = {"job": "loop", "run_name": "loop", "output_dir": str(folder / "loop"), "seed": unit.seed, "model": MODEL,
           "iterations": unit.setting["iterations"], "template": TEMPLATE, "lora": LORA,
           "prompts": {"kind": "jsonl", "path": str(work / "prompts" / "train.jsonl"), "size": VERIPO_FIXED["prompts"]},
           "grpo": {"enabled": True, "reward": {"name": "math"}, "num_generations": GRPO_FIXED["num_generations"],
                    "max_completion_length": GRPO_FIXED["max_completion_length"],
                    "optim": {**GRPO_OPTIM, "max_steps": VERIPO_FIXED["grpo_steps"]}},
           "rollouts": {"sampling": {"n": 4, "temperature": 0.7, "max_tokens": MAX_TOKENS}, "backend": BACKEND},
           "preference": {"method": "dpo", "dpo": {"beta": VERIPO_FIXED["beta"], **DPO_FIXED},
                          "optim": {**PREF_OPTIM, "max_steps": VERIPO_FIXED["dpo_steps"]}},
           "eval": {"enabled": False}}
    run_job("loop", cfg, folder, log)
    status = json.loads((folder / "loop" / "run.json").read_text())
    return status["summary"]["final_policy"], {"iterations": status.get("iterations")}


# ------------------------------------------------------------------------------------------------ status and run


def _record_path(unit: Unit) -> Path:
    return UNIT_RECORDS / f"{unit.name}.json"


def _state(unit: Unit, chash: str) -> tuple[str, float]:
    p = _record_path(unit)
    if not p.exists():
        return "to do", unit.estimate_min
    rec = json.loads(p.read_text())
    if rec.get("config_hash") != chash:
        return "stale (config changed)", unit.estimate_min
    return "done", rec["results"]["timings_s"]["total"] / 60


def status(args) -> int:
    settings = mode_settings(False)
    hashes = prompt_hashes(False)
    todo_min = 0.0
    print(f"{'unit':28s} {'prio':>4s} {'state':24s} {'minutes':>8s}")
    for u in plan():
        st, minutes = _state(u, config_hash(u, settings, hashes))
        todo_min += minutes if st != "done" else 0
        print(f"{u.name:28s} {u.priority:4d} {st:24s} {minutes:8.1f}{'' if st == 'done' else ' (estimate)'}")
    print(f"\nto do: about {todo_min:.0f} min on the 2-core reference machine")
    return 0


def prompt_hashes(quick: bool) -> dict:
    work = WORK / ("quick" if quick else "full")
    return build_prompts(QUICK_TASK if quick else TASK, work / "prompts")


def run(args) -> int:
    quick = args.quick
    work = WORK / ("quick" if quick else "full")
    settings = mode_settings(quick)
    hashes = prompt_hashes(quick)
    log_dir = work / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    units = [u for u in plan(quick) if u.priority <= args.priority and (not args.only or u.name in args.only)]
    deadline = time.time() + args.max_minutes * 60 if args.max_minutes else None
    for u in units:
        chash = config_hash(u, settings, hashes)
        if not quick and _state(u, chash)[0] == "done":
            print(f"[policy_quality] {u.name}: record exists with the same config hash, skipped", file=sys.stderr)
            continue
        if deadline and time.time() + u.estimate_min * 60 > deadline:
            print(f"[policy_quality] {u.name}: about {u.estimate_min} min would pass --max-minutes; stopping",
                  file=sys.stderr)
            break
        print(f"[policy_quality] {u.name}: running (about {u.estimate_min} min)", file=sys.stderr, flush=True)
        started = begin()
        result = run_unit(u, work, settings, hashes, log_dir, UNIT_RECORDS if not quick else work / "records")
        _check_data(u, result, quick)
        payload = {"title": f"policy quality unit {u.name}", "config_hash": chash, "settings": settings,
                   "prompt_sha256": hashes, "results": result}
        path = write_record(u.name, payload, started, (work / "records") if quick else UNIT_RECORDS)
        print(f"[policy_quality] {u.name}: done in {result['timings_s']['total'] / 60:.1f} min -> {path}",
              file=sys.stderr)
        if args.commit and not quick:
            subprocess.run(["git", "add", str(path)], cwd=ROOT, check=True)
            subprocess.run(["git", "commit", "-q", "-m", f"policy_quality: unit {u.name} "
                            f"({result['timings_s']['total'] / 60:.1f} min)", "--", str(path)], cwd=ROOT, check=True)
    if quick:
        report_from(work / "records", out_dir=work / "report", record_name=None)
    return 0


def _check_data(unit: Unit, result: dict, quick: bool) -> None:
    """Same seed, same pairs: a unit that found different data than its seed's earlier units had says so loudly."""
    if not result["data"] or quick:
        return
    for p in UNIT_RECORDS.glob(f"*-s{unit.seed}.json"):
        other = json.loads(p.read_text())["results"].get("data")
        if other and other["pairs_sha256"] != result["data"]["pairs_sha256"]:
            raise SystemExit(f"{unit.name}: the seed-{unit.seed} pairs differ from those {p.name} trained on; the "
                             "data build is not reproducible here, so the units would not be comparable")


# ------------------------------------------------------------------------------------------------ report


def load_unit_records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def _metric_by_prompt(rec: dict, metric: str) -> dict[str, float]:
    o = rec["results"]["outcomes"]
    if metric == "greedy":
        return {p: float(c) for p, c in o["greedy"]["correct"].items()}
    if metric == "sampled":
        return {p: o["sampled"]["correct"][p] / o["sampled"]["samples"][p] for p in o["sampled"]["correct"]}
    if metric in ("pass@4", "maj@4"):
        return {p: q[metric] for p, q in o["sampled"]["per_query"].items()}
    if metric == "transfer":
        return {p: float(c) for p, c in o["transfer"]["correct"].items()}
    if metric == "kl":  # per-prompt KL on the KL subset (the base model has none: its KL is 0 by definition)
        return o["sampled"].get("kl_per_prompt") or {}
    raise KeyError(metric)


METRICS = ("greedy", "sampled", "pass@4", "maj@4", "transfer")
TRANSFER_BUDGET = 0.02  # the goal: no method loses more than 2 points on the transfer task


def aggregate(records: list[dict]) -> dict:
    from workbench_eval.stats import by_seed, paired_bootstrap, seed_spread

    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["results"]["label"], []).append(r)
    if "base" not in groups:
        raise SystemExit("no base unit yet: nothing to compare against")
    base = groups["base"]
    out: dict = {"methods": {}, "comparisons": {}}
    for label, recs in groups.items():
        recs.sort(key=lambda r: r["results"]["seed"])
        m = {"seeds": [r["results"]["seed"] for r in recs], "method": recs[0]["results"]["method"]}
        for metric in METRICS:
            per_seed = [_metric_by_prompt(r, metric) for r in recs]
            m[metric] = seed_spread([sum(v.values()) / len(v) for v in per_seed])
        kls = [r["results"]["outcomes"]["sampled"].get("kl") for r in recs]
        if label == "base":  # the base model's KL to itself is 0 by definition (the eval does not sample it)
            kls = [{"kl": 0.0, "kl_se": 0.0} for _ in recs]
        if all(kls):
            m["kl"], m["kl_se"] = seed_spread([k["kl"] for k in kls]), [k["kl_se"] for k in kls]
        else:  # a trained policy without a KL measurement: unknown, never shown as 0
            m["kl"], m["kl_se"] = None, None
        m["transfer_length"] = seed_spread([r["results"]["outcomes"]["transfer"]["metrics"]["mean_length"]
                                            for r in recs])
        m["heldout_length"] = seed_spread([r["results"]["outcomes"]["greedy"]["metrics"]["mean_length"]
                                           for r in recs])
        m["train_minutes"] = [r["results"]["timings_s"].get("train", 0) / 60 for r in recs]
        m["unit_minutes"] = [r["results"]["timings_s"]["total"] / 60 for r in recs]
        out["methods"][label] = m
        if label == "base":
            continue
        comp = {}
        for metric in METRICS:
            comp[metric] = paired_bootstrap(by_seed([_metric_by_prompt(r, metric) for r in recs]),
                                            by_seed([_metric_by_prompt(r, metric) for r in base]))
        out["comparisons"][f"{label} - base"] = comp
    # HyPO against DPO at the same beta: accuracy and KL, paired on prompts.
    method_of = {label: recs[0]["results"]["method"] for label, recs in groups.items()}
    for h in [k for k in groups if method_of[k] == "hypo"]:
        for d in [k for k in groups if method_of[k] == "dpo"]:
            if groups[h][0]["results"]["setting"].get("beta") != groups[d][0]["results"]["setting"].get("beta"):
                continue
            comp = {metric: paired_bootstrap(by_seed([_metric_by_prompt(r, metric) for r in groups[h]]),
                                             by_seed([_metric_by_prompt(r, metric) for r in groups[d]]))
                    for metric in METRICS}
            comp["kl"] = paired_bootstrap(by_seed([_metric_by_prompt(r, "kl") for r in groups[h]]),
                                          by_seed([_metric_by_prompt(r, "kl") for r in groups[d]]))
            out["comparisons"][f"{h} - {d}"] = comp
    return out


def goals(agg: dict) -> list[str]:
    lines = []
    for label, m in agg["methods"].items():
        if label == "base":
            continue
        c = agg["comparisons"][f"{label} - base"]["greedy"]
        beat = c["excludes_zero"] and c["delta"] > 0
        verdict = ("beats base (the 95% CI excludes 0)" if beat else
                   "does NOT beat base (the 95% CI includes 0 or lies below)")
        lines.append(f"{label} vs base, greedy held-out accuracy: {c['delta']:+.3f} [{c['ci_low']:+.3f}, "
                     f"{c['ci_high']:+.3f}] over {c['prompts']} prompts, {c['seeds_a']} seed(s): {verdict}.")
        t = agg["comparisons"][f"{label} - base"]["transfer"]
        within = t["delta"] >= -TRANSFER_BUDGET - 1e-9  # exact 2-point losses are inside (thirds of seeds in floats)
        ruled_out = t["ci_low"] >= -TRANSFER_BUDGET - 1e-9
        lines.append(f"{label} transfer (forgetting) vs base: {t['delta']:+.3f} [{t['ci_low']:+.3f}, "
                     f"{t['ci_high']:+.3f}]: {'within' if within else 'loses more than'} the 2-point forgetting "
                     f"budget; the 95% CI {'rules out' if ruled_out else 'does not rule out'} a loss of more than "
                     "2 points.")
    for key, comp in agg["comparisons"].items():
        if not comp.get("kl"):  # only the HyPO - DPO comparisons carry a KL difference
            continue
        a, k = comp["greedy"], comp["kl"]
        equal = a["ci_low"] <= 0 <= a["ci_high"]
        lower = k["ci_high"] < 0
        met = "met" if (equal and lower) else "NOT met"
        lines.append(f"{key}: accuracy {a['delta']:+.3f} [{a['ci_low']:+.3f}, {a['ci_high']:+.3f}] "
                     f"({'equal within the CI' if equal else 'not equal'}); KL {k['delta']:+.3f} nats "
                     f"[{k['ci_low']:+.3f}, {k['ci_high']:+.3f}] "
                     f"({'lower, CI below 0' if lower else 'not shown lower'}): the goal 'at equal accuracy, "
                     f"HyPO's KL is lower than DPO's' is {met}.")
    return lines


def plots(agg: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    comps = [(k, v) for k, v in agg["comparisons"].items() if k.endswith(" - base")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, metric, title in zip(axes, ("greedy", "pass@4", "transfer"),
                                 ("held-out greedy accuracy", "held-out pass@4", "transfer greedy accuracy")):
        names = [k.replace(" - base", "") for k, _ in comps]
        d = [v[metric]["delta"] for _, v in comps]
        err = [[v[metric]["delta"] - v[metric]["ci_low"] for _, v in comps],
               [v[metric]["ci_high"] - v[metric]["delta"] for _, v in comps]]
        ax.bar(range(len(d)), d, yerr=err, capsize=4, color="#4C72B0")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(d)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{title}\nminus base (95% CI)", fontsize=9)
    fig.tight_layout()
    p = out_dir / "policy_quality_vs_base.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    files.append(p)
    # Accuracy against KL: each method-setting a point, 95% CIs on both axes (accuracy: the paired CI shifted to the
    # method's level; KL: +-1.96 of the pooled s.e. of the seeds' means).
    fig, ax = plt.subplots(figsize=(6, 4.2))
    base_acc = agg["methods"]["base"]["greedy"]["mean"]
    for label, m in agg["methods"].items():
        if label == "base":
            ax.plot([0], [base_acc], "ks", label="base")
            continue
        if m["kl"] is None:
            continue  # no KL measured: no point to place
        c = agg["comparisons"][f"{label} - base"]["greedy"]
        se = (sum(s * s for s in m["kl_se"]) ** 0.5) / len(m["kl_se"])
        ax.errorbar([m["kl"]["mean"]], [base_acc + c["delta"]], xerr=[[1.96 * se], [1.96 * se]],
                    yerr=[[c["delta"] - c["ci_low"]], [c["ci_high"] - c["delta"]]], fmt="o", capsize=3, label=label)
    ax.set_xlabel("KL(pi || base), nats per completion")
    ax.set_ylabel("held-out greedy accuracy")
    ax.legend(fontsize=8)
    ax.set_title("accuracy against KL to the base (95% CIs)", fontsize=9)
    fig.tight_layout()
    p = out_dir / "policy_quality_accuracy_vs_kl.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    files.append(p)
    return [str(f.relative_to(ROOT)) if f.is_relative_to(ROOT) else str(f) for f in files]


def report_from(folder: Path, out_dir: Path, record_name: str | None) -> dict:
    started = begin()
    records = load_unit_records(folder)
    agg = aggregate(records)
    files = plots(agg, out_dir)
    rows = []
    for label, m in agg["methods"].items():
        c = agg["comparisons"].get(f"{label} - base")
        rows.append([label, len(m["seeds"]), m["greedy"]["mean"], m["greedy"]["sd"],
                     None if c is None else f"{c['greedy']['delta']:+.3f} [{c['greedy']['ci_low']:+.3f}, "
                                            f"{c['greedy']['ci_high']:+.3f}]",
                     m["sampled"]["mean"], m["pass@4"]["mean"], m["maj@4"]["mean"], m["kl"] and m["kl"]["mean"],
                     m["transfer"]["mean"],
                     None if c is None else f"{c['transfer']['delta']:+.3f} [{c['transfer']['ci_low']:+.3f}, "
                                            f"{c['transfer']['ci_high']:+.3f}]",
                     m["heldout_length"]["mean"], sum(m["unit_minutes"]) / len(m["unit_minutes"])])
    comp_rows = []
    for key, comp in agg["comparisons"].items():
        for metric, c in comp.items():
            comp_rows.append([key, metric, c["delta"], c["ci_low"], c["ci_high"], c["prompts"],
                              f"{c['seeds_a']} vs {c['seeds_b']}", c["excludes_zero"]])
    plan_rows = []
    settings = mode_settings(False)
    hashes = json.loads(json.dumps(records[0]["prompt_sha256"])) if records else {}
    for u in plan():
        st, minutes = _state(u, config_hash(u, settings, hashes)) if folder == UNIT_RECORDS else ("-", 0)
        plan_rows.append([u.name, u.priority, st, round(minutes, 1)])
    payload = {
        "title": "Policy quality: SmolLM2-135M trained with DPO, HyPO and GRPO on verified reasoning-gym sums",
        "tables": [
            {"title": "Per method (seeds pooled); deltas are paired over held-out prompts, 95% cluster-bootstrap CIs",
             "columns": ["method", "seeds", "greedy acc", "sd over seeds", "greedy minus base [95% CI]",
                         "sampled acc (T=0.7)", "pass@4", "maj@4", "KL to base (nats)", "transfer acc",
                         "transfer minus base [95% CI]", "greedy length", "minutes per unit"],
             "rows": rows, "formats": ["", "d", ".3f", ".3f", "", ".3f", ".3f", ".3f", ".3f", ".3f", "", ".1f",
                                       ".1f"]},
            {"title": "Every paired comparison", "columns": ["comparison", "metric", "delta", "CI low", "CI high",
                                                             "prompts", "seeds", "CI excludes 0"],
             "rows": comp_rows, "formats": ["", "", "+.3f", "+.3f", "+.3f", "d", "", ""]},
            {"title": "The plan (python benchmarks/policy_quality.py status)", "columns": ["unit", "priority",
                                                                                           "state", "minutes"],
             "rows": plan_rows, "formats": ["", "d", "", ".1f"]},
        ],
        "notes": goals(agg) + [f"Plots: {', '.join(files)}.",
                               "Tuning budget: every preference method ran with the same LoRA, steps, batch and "
                               f"learning rate ({PREF_OPTIM}); GRPO with {GRPO_OPTIM}. Settings tried per method: "
                               "the ones in the plan, nothing else."],
        "results": {"aggregate": agg, "units": [r["results"]["unit"] for r in records], "plots": files,
                    "unit_config_hashes": {r["results"]["unit"]: r["config_hash"] for r in records}},
    }
    if record_name:
        write_record(record_name, payload, started)
    else:
        (out_dir / "report.json").write_text(json.dumps(payload, indent=2, default=str))
        print("\n".join(payload["notes"]))
    return payload


def report(args) -> int:
    report_from(UNIT_RECORDS, RESULTS / "policy_quality", "policy_quality")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--quick", action="store_true", help="a small plan (about 15 min) in runs/, records not committed")
    r.add_argument("--priority", type=int, default=5, help="run units up to this priority")
    r.add_argument("--only", nargs="*", default=None)
    r.add_argument("--max-minutes", type=float, default=None, help="start no unit that would not finish by then")
    r.add_argument("--commit", action="store_true", help="git commit each unit's record as soon as it is written")
    sub.add_parser("status")
    sub.add_parser("report")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return {"run": run, "status": status, "report": report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
