"""Kill anywhere, training and orchestration (issue 14, item 3, part 2): ``workbench train`` (dpo, hypo, grpo,
listwise) and ``workbench loop``, SIGKILLed at a seeded random moment and rerun, end exactly where an uninterrupted
run ends.

The moment is a file event of the uninterrupted run (:func:`killing.record_events`: before a file is opened for
writing, right after an atomic commit), so it can fall between any two files a run writes: mid-step (a metrics row),
mid-checkpoint (after the weights, before ``trainer_state.json`` or the completion marker -- the case that used to
crash the resume), mid-model-save, between the summary row and ``run.json``. Half the draws are restricted to the
inside of a checkpoint, so each seed sweep (``WORKBENCH_KILL_SEED``) keeps hitting that case.

Tolerance: none. The resumed run restores the weights, optimizer and scheduler states, the data order (the seeded
sampler, skipped to the step) and the Python/NumPy/torch RNG states (which drive dropout, HF sampling for HyPO's
online term and TRL's GRPO generations) from the checkpoint, and executes the same float operations in the same
order on the same machine and thread count; nothing on this CPU path is order-nondeterministic (no atomics). So the
weights must be *bitwise* equal, and every logged number but the wall-clock ones too. ``OMP_NUM_THREADS=1``: both
runs use one thread (equal numerics), and on a loaded 2-core machine one thread is much faster than two
(oversubscribed OpenMP threads spin: with the load at 5, a tiny-llama DPO step took 5 s with two, 60 ms with one).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from killing import kill_on_event, record_events, rng, run_to_end, snapshot

from conftest import needs_vllm

ENV = {"OMP_NUM_THREADS": "1"}

# The only numbers allowed to differ: wall-clock values (train_runtime, step_time, hypo/gen_time_share, "time",
# "finished", the loop's time/<stage>, samples_per_s ...) and the sharded stages' per-process throughput rows
# (throughput/units_done_before and units_run count what *this* process did: they say where the kill was), the
# eval's "created" date and model_fingerprint (a hash of the model folder's path and file mtimes, by design), and the
# git commit (in a shared checkout HEAD may move between the two runs).
TIMING = re.compile(r"time|runtime|per_second|per_s$|seconds|finished|created|^throughput/|fingerprint|git_commit")

METHODS = {
    "dpo": ("recipes/tiny/dpo.yaml", []),
    "hypo": ("recipes/tiny/hypo.yaml", ["hypo.sampler=hf"]),
    # rollout_aware without the judge: a reward that varies between a random model's samples (the recipe's math
    # reward is 0 for all of them, so every advantage, and every GRPO gradient, would be 0 and resuming trivially
    # exact); 3 steps so that samples drawn after a resume decide a real update.
    "grpo": ("recipes/tiny/grpo.yaml", ["grpo.reward.name=rollout_aware",
                                        'grpo.reward.options={"use_judge": false, "min_len": 2}', "optim.max_steps=3"]),
    "listwise": ("recipes/tiny/listwise.yaml", []),
}


def _train_args(method: str, out: Path, extra=()) -> list:
    recipe, overrides = METHODS[method]
    return ["train", "--config", recipe, *overrides, *extra, f"output_dir={out}"]


# ----------------------------------------------------------------------------------------------- comparing


def normalise(obj, roots: dict[str, str]):
    """Drop wall-clock keys; write the run folders' paths as placeholders (the two runs live in different folders)."""
    if isinstance(obj, dict):
        # PEFT writes adapter_config.json's target_modules from a set: in string-hash order, which differs between
        # any two processes (PYTHONHASHSEED), killed or not.
        return {k: sorted(v) if k == "target_modules" and isinstance(v, list) else normalise(v, roots)
                for k, v in obj.items() if not TIMING.search(k)}
    if isinstance(obj, list):
        return [normalise(v, roots) for v in obj]
    if isinstance(obj, str):
        for path in sorted(roots, key=len, reverse=True):  # a root inside another is replaced first
            obj = obj.replace(path, roots[path])
        return obj
    if isinstance(obj, bytes):
        try:
            return normalise(obj.decode(), roots).encode()
        except UnicodeDecodeError:  # weights, pickles: compared byte for byte
            return obj
    return obj


def metric_rows(run: Path, roots: dict[str, str]) -> list[dict]:
    """metrics.jsonl without wall-clock values and without ``event`` rows (listwise notes each resume)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [normalise(r, roots) for r in rows if "event" not in r]


def outputs(run: Path, roots: dict[str, str]) -> dict:
    """What a finished training run hands on: the model folder, run.json, config.yaml, the metrics.

    Left out: env.json (the machine and start time), checkpoints/ (resume state, not output; the model is trained
    from them), the model card README.md (the run.json summary again, with wall-clock times in prose),
    training_args.bin (a pickle of the TrainingArguments: config.yaml again, with the run's own path), and the
    summary's ``resumed_from`` (provenance: it names the checkpoint the rerun started from)."""
    snap = {f"model/{k}": v for k, v in snapshot(run / "model", skip=["README.md", "training_args.bin"]).items()}
    snap["config.yaml"] = (run / "config.yaml").read_bytes()
    status = json.loads((run / "run.json").read_text())
    status["summary"].pop("resumed_from", None)
    snap["run.json"] = status
    snap["metrics.jsonl"] = metric_rows(run, {})
    return normalise(snap, roots)


def assert_same_outputs(got: dict, want: dict, what: str) -> None:
    assert sorted(got) == sorted(want), f"{what}: files differ: {sorted(set(got) ^ set(want))}"
    for name in sorted(want):
        if got[name] != want[name]:
            a, b = got[name], want[name]
            if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
                i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
                a, b = a[i], b[i]
                name = f"{name} row {i}"
            raise AssertionError(f"{what}: {name} differs:\nresumed:       {str(a)[:1500]}\n"
                                 f"uninterrupted: {str(b)[:1500]}")


def choose_event(events: list[str], r) -> int:
    """A random event; half the time one inside a checkpoint being written (after its first file, before its
    completion marker is committed)."""
    inside = [j for j, e in enumerate(events)
              if "checkpoints/checkpoint-" in e and not e.endswith("/.workbench-complete")]
    # The first event (config.yaml) would kill a run that has produced nothing: another test's business.
    return r.choice(inside) if inside and r.random() < 0.5 else r.randrange(1, len(events))


def _state(run: Path) -> str:
    """What the kill left, for the failure message."""
    ck = run / "checkpoints"
    marks = sorted(f"{p.name}{'' if (p / '.workbench-complete').exists() else ' (incomplete)'}"
                   for p in ck.glob("checkpoint-*")) if ck.exists() else []
    return f"checkpoints {marks or 'none'}; model {'saved' if (run / 'model').exists() else 'absent'}; " \
           f"run.json {'present' if (run / 'run.json').exists() else 'absent'}"


# ----------------------------------------------------------------------------------------------- training


# Default seeds: each kill lands inside a checkpoint being written, after an earlier one completed, so the rerun
# resumes from a checkpoint and redoes steps (the RNG, data order and optimizer restore all matter).
SEEDS = {"dpo": 3, "hypo": 8, "grpo": 9, "listwise": 5}


@pytest.mark.parametrize("method", list(METHODS))
def test_training_killed_anywhere_ends_as_the_uninterrupted_run(tmp_path, method):
    kill_and_compare(tmp_path, method, SEEDS[method])


@needs_vllm
def test_hypo_with_vllm_samples_killed_anywhere_ends_as_the_uninterrupted_run(tmp_path):
    """vLLM keeps its own generator, which no checkpoint holds: the sampler seeds every request from (seed, step,
    micro-batch, rank, prompt), so the resumed run draws what the uninterrupted run drew (sync_every=1 divides
    save_steps=2)."""
    kill_and_compare(tmp_path, "hypo", 13, ["hypo.sampler=vllm"])


def kill_and_compare(tmp_path: Path, method: str, default_seed: int, extra=()) -> None:
    r, seed = rng(default_seed)
    ref, run = tmp_path / "uninterrupted", tmp_path / "killed"
    roots = {str(ref): "<run>", str(run): "<run>"}
    t0 = time.perf_counter()
    events = record_events(_train_args(method, ref, extra), ref, env=ENV)
    j = choose_event(events, r)
    killed = kill_on_event(_train_args(method, run, extra), run, j, events[j], env=ENV)
    left = _state(run)
    assert not (run / "run.json").exists() or json.loads((run / "run.json").read_text())["status"] != "done"
    rerun = run_to_end(_train_args(method, run, extra), env=ENV)
    where = f"seed {seed}: killed at {killed.moment} of {len(events)}, leaving {left}"
    print(f"[{method}] {where}; {time.perf_counter() - t0:.0f}s")

    want = outputs(ref, roots)
    assert _training_moved_the_weights(method, ref), f"{method}: training changed nothing; the test would be vacuous"
    assert_same_outputs(outputs(run, roots), want, f"{method}, {where}")
    steps = [row["step"] for row in metric_rows(run, {}) if "loss" in row]
    max_steps = json.loads((run / "run.json").read_text())["summary"]["global_step"]
    assert steps == list(range(1, max_steps + 1)), f"{where}: training steps logged {steps}"
    assert all((p / ".workbench-complete").exists() for p in (run / "checkpoints").glob("checkpoint-*")), where
    if "incomplete" in left:
        assert "incomplete checkpoint" in rerun.stderr, where


def _training_moved_the_weights(method: str, run: Path) -> bool:
    """Did the uninterrupted run change the model? (Else equal weights after a resume would prove nothing.) LoRA
    adapters start with B = 0; full models are compared with the untrained tiny model, tensor by tensor."""
    from safetensors.torch import load_file

    from workbench.models import resolve_model

    if method in ("dpo", "hypo"):
        adapter = load_file(run / "model" / "adapter_model.safetensors")
        return any(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)
    base = Path(resolve_model("tiny-bert" if method == "listwise" else "tiny-llama"))
    (trained_file,) = (run / "model").rglob("model.safetensors")
    (base_file,) = base.rglob("model.safetensors")
    trained, initial = load_file(trained_file), load_file(base_file)
    shared = set(trained) & set(initial)
    assert len(shared) >= len(initial) // 2, f"{method}: tensor names do not match {base_file}"
    return any(not trained[k].equal(initial[k]) for k in shared)


# ----------------------------------------------------------------------------------------------- the loop


def folder_outputs(folder: Path, roots: dict[str, str]) -> dict:
    """Every file a finished folder holds, normalised, but: env.json (machine, start time), checkpoints/ (resume
    state), model cards and training_args.bin (see :func:`outputs`), timings.json (wall clock), the rendered report
    and plots (drawn from metrics.jsonl, which is compared). metrics.jsonl is compared row by row (no ``event`` rows);
    run.json without ``resumed_from``."""
    skip = ("env.json", "README.md", "training_args.bin", "timings.json", "report.md")
    snap = {k: v for k, v in snapshot(folder, skip=skip).items()
            if "checkpoints/" not in k and not k.endswith(".png") and not k.endswith("metrics.jsonl")}
    for metrics in folder.rglob("metrics.jsonl"):
        snap[str(metrics.relative_to(folder))] = metric_rows(metrics.parent, {})
    for name, value in snap.items():
        if name.endswith("run.json"):
            value.get("summary", {}).pop("resumed_from", None)
    return normalise(snap, roots)


def test_loop_killed_anywhere_ends_as_the_uninterrupted_run(tmp_path):
    """``workbench loop`` (2 iterations of GRPO -> rollouts -> verify -> pairs -> DPO -> eval, all in one process)
    killed at a random file event -- inside any stage, between stages, between an iteration's summary row and
    run.json -- then rerun: every stage's outputs, the per-iteration summaries and the final run.json are those of
    the uninterrupted run, and each iteration's summary row is logged once."""
    # The default seed kills iteration 1's DPO while it writes its last checkpoint: the rerun keeps iteration 0 and
    # iteration 1's first four stages, resumes the DPO from its first checkpoint, then evaluates and summarises.
    r, seed = rng(12)
    ref, run = tmp_path / "uninterrupted", tmp_path / "killed"
    roots = {str(ref): "<loop>", str(run): "<loop>"}

    def args(out):
        return ["loop", "--config", "recipes/tiny/loop.yaml", f"output_dir={out}"]

    t0 = time.perf_counter()
    events = record_events(args(ref), ref, env=ENV)
    j = choose_event(events, r)
    killed = kill_on_event(args(run), run, j, events[j], env=ENV)
    stages = sorted(str(p.parent.relative_to(run)) for p in run.glob("iter_*/*/run.json"))
    run_to_end(args(run), env=ENV)
    where = f"seed {seed}: killed at {killed.moment} of {len(events)}, with {stages or 'no stage'} finished"
    print(f"[loop] {where}; {time.perf_counter() - t0:.0f}s")

    got, want = folder_outputs(run, roots), folder_outputs(ref, roots)
    for i in (0, 1):  # the comparison covers every stage of both iterations, and the policies' weights
        for stage in ("grpo", "rollouts", "verify", "pairs", "preference", "eval"):
            assert any(k.startswith(f"iter_{i}/{stage}/") for k in want), f"iter_{i}/{stage} produced nothing"
        assert f"iter_{i}/preference/model/adapter_model.safetensors" in want
    assert_same_outputs(got, want, f"loop, {where}")
    rows = metric_rows(run, {})
    assert [row["iteration"] for row in rows if "iteration" in row] == [0, 1], f"{where}: summary rows {rows}"
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "done" and [s["iteration"] for s in status["iterations"]] == [0, 1], where
