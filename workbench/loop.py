"""`workbench loop`: VerIPO's iterative loop, GRPO -> rollouts -> rollout-aware verify -> pairs -> DPO/HyPO -> eval.

Li et al. 2025, "VerIPO: Cultivating Long Reasoning in Video-LLMs via Verifier-Guided Iterative Policy
Optimization" (arXiv 2505.19000): GRPO explores, a rollout-aware verifier turns the round's rollouts into contrastive
pairs, DPO aligns fast on them, and the cycle repeats. This module adds no algorithm: every stage is the existing job
(``train`` grpo, ``generate rollouts``, ``verify``, ``pairs``, ``train`` dpo/hypo, ``eval reasoning``), called with a
config built from the loop recipe. With ``grpo.enabled: false`` it is plain iterative DPO (or HyPO) on fresh
on-policy pairs.

State: stage s of iteration i writes ``runs/<name>/iter_<i>/<s>/`` (its own run folder). A finished stage is never
recomputed: rerunning the command after a kill resumes at the first unfinished stage (each job resumes its own
shards/checkpoints). Each stage starts from the policy produced by the previous one; ``iter_<i>/lineage.json``
records every stage's input policy and data paths.

Between iterations, easy-prompt pruning drops ``prune_easy_fraction`` of the prompts whose samples all passed
(VerIPO drops 80%); the per-iteration summary goes to ``metrics.jsonl`` (rows with an ``iteration`` key), which
``workbench report`` plots against the iteration.

Killed anywhere, the rerun ends with what an uninterrupted run ends with: a summary row is logged once (the rows
already in ``metrics.jsonl`` say which iterations were logged, not ``run.json``, which is written after them), and
``run.json`` is written done in one atomic write with every iteration's summary. Only the ``time/<stage>`` values
differ: a stage's time is that of the attempt that finished it, or None when the kill came between the stage's end
and the saving of its time.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from workbench_eval.tasks import TaskConfig
from workbench.config import register_job
from workbench.generation.backends import BackendConfig, SamplingConfig
from workbench.generation.prompts import PromptSourceConfig
from workbench.store.runs import RunConfig
from workbench.data.pairs import PairsSettings
from workbench.training.preference import DPOSection, GRPOSection, HyPOSection
from workbench.training.settings import LoraConfig, OptimConfig
from workbench.verifiers.job import VerifierConfig

ITERATION_STAGES = ("grpo", "rollouts", "verify", "pairs", "preference", "eval")  # the order within one iteration

# The loop's sections are the stages' own config classes (plus an on/off switch where a stage is optional), so a key
# means the same thing here as in the stage's own recipe.


@dataclass
class GRPOStage(GRPOSection):
    """The `grpo` recipe section (``train`` with ``method: grpo``) plus ``enabled`` and ``optim``. The loop supplies
    the prompts (its pool) and the template. Before 0.2 the GRPO keys sat one level down (``grpo.grpo.*``)."""

    RENAMED = {"grpo": "."}

    enabled: bool = True
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(max_steps=10, learning_rate=1e-5))

    def validate(self):
        if self.prompts is not None:
            raise ValueError("grpo.prompts: the loop trains GRPO on its own prompt pool (the top-level `prompts`)")


@dataclass
class RolloutStage:
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(n=4, temperature=0.7, max_tokens=128))
    backend: BackendConfig = field(default_factory=BackendConfig)


@dataclass
class PreferenceStage:
    enabled: bool = True
    method: Literal["dpo", "hypo"] = "dpo"
    dpo: DPOSection = field(default_factory=DPOSection)
    hypo: HyPOSection = field(default_factory=HyPOSection)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(max_steps=20, learning_rate=5e-5))


@dataclass
class EvalStage:
    enabled: bool = True
    task: TaskConfig = field(default_factory=TaskConfig)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(n=1, temperature=0.7, max_tokens=128))
    k: list[int] = field(default_factory=lambda: [1])
    kl_to_initial: bool = True


@register_job("loop")
@dataclass
class LoopConfig(RunConfig):
    model: str = "smollm2-135m-instruct"
    iterations: int = 2
    prompts: PromptSourceConfig = field(default_factory=PromptSourceConfig)  # the training prompt pool
    template: str = "{prompt}\nGive the final answer after ####."
    chat: bool = True
    system_prompt: str | None = None
    lora: LoraConfig | None = field(default_factory=LoraConfig)
    grpo: GRPOStage = field(default_factory=GRPOStage)
    rollouts: RolloutStage = field(default_factory=RolloutStage)
    verifier: VerifierConfig = field(default_factory=lambda: VerifierConfig(name="rollout_aware"))
    # VerIPO's pairs by default: the longest good sample against each bad one, at most 2 per prompt.
    pairs: PairsSettings = field(default_factory=lambda: PairsSettings(strategy="veripo", max_pairs_per_prompt=2))
    preference: PreferenceStage = field(default_factory=PreferenceStage)
    eval: EvalStage = field(default_factory=EvalStage)
    prune_easy_fraction: float = 0.8

    def validate(self):
        if self.iterations < 1:
            raise ValueError("iterations must be >= 1")
        if not 0 <= self.prune_easy_fraction <= 1:
            raise ValueError("prune_easy_fraction must be in [0, 1]")
        if "{prompt}" not in self.template:
            raise ValueError("template must contain {prompt}")


# ----------------------------------------------------------------------------------------------- pruning


def prune_easy(pool: list[dict], verdict_rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], dict]:
    """Drop ``fraction`` of the prompts whose samples all passed (seeded); keep every other prompt."""
    by_prompt: dict[str, list[bool]] = {}
    for r in verdict_rows:
        by_prompt.setdefault(str(r["prompt_id"]), []).append(bool(r["passed"]))
    easy = sorted(pid for pid, ps in by_prompt.items() if ps and all(ps))
    rng = random.Random(seed)
    dropped = set(rng.sample(easy, int(round(fraction * len(easy)))))
    kept = [p for p in pool if str(p["id"]) not in dropped]
    return kept, {"prompts_in": len(pool), "all_passed": len(easy), "pruned": len(dropped), "kept": len(kept)}


# ----------------------------------------------------------------------------------------------- stages


def _stage_cfg(job_cls, data: dict):
    from workbench.config import build

    return build(job_cls, data, source="<loop recipe>")


class _Iteration:
    """Runs one iteration's stages in order, skipping finished ones, threading the policy through."""

    def __init__(self, cfg: LoopConfig, root: Path, i: int, policy: str):
        self.cfg, self.dir, self.i, self.policy = cfg, root / f"iter_{i}", i, policy
        self.dir.mkdir(parents=True, exist_ok=True)
        self.timings = self._read("timings.json")
        self.lineage = self._read("lineage.json")

    def _read(self, name: str) -> dict:
        p = self.dir / name
        return json.loads(p.read_text()) if p.exists() else {}

    def _save(self, name: str, obj: dict) -> None:
        from workbench.store.files import atomic_write

        atomic_write(self.dir / name, json.dumps(obj, indent=2))

    def stage(self, name: str, fn, inputs: dict) -> None:
        out = self.dir / name
        done = (out / "run.json").exists() and json.loads((out / "run.json").read_text()).get("status") == "done"
        self.lineage[name] = {"output": str(out), **inputs}
        self._save("lineage.json", self.lineage)
        if done:
            print(f"[loop] iter {self.i} {name}: finished earlier, kept", file=sys.stderr)
            return
        print(f"[loop] iter {self.i} {name}: running (inputs: {inputs})", file=sys.stderr)
        t0 = time.perf_counter()
        fn(out)
        self.timings[name] = time.perf_counter() - t0 + self.timings.get(name, 0.0)
        self._save("timings.json", self.timings)

    def stage_times(self) -> dict:
        """``time/<stage>`` for every stage of this iteration: None if it finished in a run killed before it could
        save its time (so the summary has the same keys however the loop was interrupted)."""
        return {f"time/{k}": self.timings.get(k) for k in ITERATION_STAGES if k in self.lineage}


def _policy_train_cfg(cfg: LoopConfig, method: str, model: str, out: Path, extra: dict) -> dict:
    from workbench.config import to_dict

    data = {"job": "train", "method": method, "run_name": out.name, "output_dir": str(out), "seed": cfg.seed,
            "model": model, "chat": cfg.chat, "lora": to_dict(cfg.lora) if cfg.lora else None}
    data.update(extra)
    return data


def run(cfg: LoopConfig, overwrite: bool = False) -> dict:
    from workbench_eval import reasoning
    from workbench.config import to_dict
    from workbench.data import pairs as pairs_job
    from workbench.generation import rollouts
    from workbench.generation.prompts import load_prompts
    from workbench.store.shards import read_manifest, read_rows
    from workbench.models import merged_model_dir, resolve_model
    from workbench.store.files import atomic_write
    from workbench.store.runs import open_run
    from workbench.training import preference
    from workbench.verifiers import job as verify_job

    run_ = open_run(cfg.run_dir(), to_dict(cfg), overwrite=overwrite)
    if run_.done:
        return run_.status().get("summary", {})
    root = run_.path
    pool_file = root / "iter_0" / "pool.jsonl"
    if not pool_file.exists():
        recs = load_prompts(cfg.prompts)
        atomic_write(pool_file, "".join(json.dumps({"id": r.prompt_id, "prompt": r.prompt, "reference": r.reference})
                                        + "\n" for r in recs))
    summaries = {row["iteration"]: row for row in run_.status().get("iterations", [])}
    # The iterations whose summary row is in metrics.jsonl: a kill between that row and run.json must not log it twice.
    logged = {json.loads(line).get("iteration") for line in (root / "metrics.jsonl").read_text().splitlines()
              if line.strip()}
    policy = cfg.model
    for i in range(cfg.iterations):
        it = _Iteration(cfg, root, i, policy)
        pool_file = it.dir / "pool.jsonl"
        pool = [json.loads(line) for line in pool_file.read_text().splitlines() if line.strip()]
        pool_src = {"kind": "jsonl", "path": str(pool_file)}

        if cfg.grpo.enabled:
            g = {k: v for k, v in to_dict(cfg.grpo).items() if k not in ("enabled", "optim")}
            g["prompts"], g["template"] = pool_src, cfg.template
            it.stage("grpo", lambda out: preference.run(_stage_cfg(preference.GRPOTrainConfig, _policy_train_cfg(
                cfg, "grpo", merged_model_dir(resolve_model(policy)), out,
                {"grpo": g, "optim": to_dict(cfg.grpo.optim)}))), {"policy": policy, "prompts": str(pool_file)})
            policy = str(it.dir / "grpo" / "model")

        it.stage("rollouts", lambda out: rollouts.run(_stage_cfg(rollouts.RolloutsConfig, {
            "job": "rollouts", "run_name": out.name, "output_dir": str(out), "seed": cfg.seed + i, "model": policy,
            "prompts": pool_src, "template": cfg.template, "chat": cfg.chat, "system_prompt": cfg.system_prompt,
            "backend": to_dict(cfg.rollouts.backend), "sampling": to_dict(cfg.rollouts.sampling)})),
            {"policy": policy, "prompts": str(pool_file)})
        it.stage("verify", lambda out: verify_job.run(_stage_cfg(verify_job.VerifyConfig, {
            "job": "verify", "run_name": out.name, "output_dir": str(out), "input_dir": str(it.dir / "rollouts"),
            "verifier": to_dict(cfg.verifier)})), {"rollouts": str(it.dir / "rollouts")})
        it.stage("pairs", lambda out: pairs_job.run(_stage_cfg(pairs_job.PairsConfig, {
            "job": "pairs", "run_name": out.name, "output_dir": str(out), "seed": cfg.seed + i,
            "input_dir": str(it.dir / "verify"), **to_dict(cfg.pairs)})), {"verdicts": str(it.dir / "verify")})
        n_pairs = read_manifest(it.dir / "pairs" / "pairs")["num_rows"]

        pref = cfg.preference
        if pref.enabled and n_pairs > 0:
            extra = {"data": {"path": str(it.dir / "pairs")}, "dpo": to_dict(pref.dpo), "optim": to_dict(pref.optim)}
            if pref.method == "hypo":
                extra["hypo"] = to_dict(pref.hypo)
            cls = preference.HyPOTrainConfig if pref.method == "hypo" else preference.DPOTrainConfig
            it.stage("preference", lambda out: preference.run(_stage_cfg(cls, _policy_train_cfg(
                cfg, pref.method, merged_model_dir(resolve_model(policy)), out, extra))),
                {"policy": policy, "pairs": str(it.dir / "pairs")})
            policy = str(it.dir / "preference" / "model")
        elif pref.enabled:
            print(f"[loop] iter {i} preference: no pairs this round; the policy carries over unchanged",
                  file=sys.stderr)

        metrics: dict[str, Any] = {}
        if cfg.eval.enabled:
            e = cfg.eval
            it.stage("eval", lambda out: reasoning.run(_stage_cfg(reasoning.ReasoningEvalConfig, {
                "job": "eval_reasoning", "run_name": out.name, "output_dir": str(out), "seed": cfg.seed,
                "model": policy, "task": to_dict(e.task), "backend": to_dict(cfg.rollouts.backend),
                "sampling": to_dict(e.sampling), "k": e.k, "chat": cfg.chat, "system_prompt": cfg.system_prompt,
                "reference_model": cfg.model if e.kl_to_initial else None})), {"policy": policy})
            metrics = json.loads((it.dir / "eval" / "results.json").read_text())["metrics"]

        # Summary, then the next iteration's pool.
        verdicts = read_rows(it.dir / "verify" / "verdicts")
        details = [json.loads(r["details"]) for r in verdicts]
        consistent = [d["consistent"] for d in details if d.get("consistent") is not None]
        pair_counts = json.loads((it.dir / "pairs" / "pairs" / "counts.json").read_text())
        next_pool, prune = prune_easy(pool, verdicts, cfg.prune_easy_fraction, cfg.seed + i)
        summary = {"iteration": i, "heldout_accuracy": metrics.get("accuracy"), "kl_to_initial": metrics.get("kl_to_ref"),
                   "mean_length": sum(r["num_tokens"] for r in verdicts) / len(verdicts),
                   "train_pass_rate": sum(r["passed"] for r in verdicts) / len(verdicts),
                   "consistency_rate": sum(consistent) / len(consistent) if consistent else None,
                   "repetition_rate": sum(bool(d.get("repetitive")) for d in details) / len(details),
                   "prompts_kept": prune["kept"], "prompts_pruned": prune["pruned"], "pairs": pair_counts["pairs"],
                   "policy": policy, **it.stage_times()}
        if i not in logged:
            run_.log_metrics(summary, iteration=i)
            logged.add(i)
        summaries[i] = summary
        nxt = root / f"iter_{i + 1}" / "pool.jsonl"
        if i + 1 < cfg.iterations and not nxt.exists():
            atomic_write(nxt, "".join(json.dumps(p) + "\n" for p in next_pool))
        status = {"status": "running", "iterations": [summaries[k] for k in sorted(summaries)]}
        atomic_write(root / "run.json", json.dumps(status, indent=2, default=float))
        print(f"[loop] iteration {i}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                                   for k, v in summary.items() if k != "policy"), file=sys.stderr)
    from workbench_eval.compare import report

    report([str(root)], str(root))
    # Done and the iterations in one write: a run.json marked done without them would be "finished" to a rerun.
    run_.mark_done({"final_policy": policy, "iterations": len(summaries)},
                   iterations=[summaries[k] for k in sorted(summaries)])
    return {"final_policy": policy}
