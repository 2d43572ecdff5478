"""Kill anywhere: each long stage, SIGKILLed through the real CLI at seeded random moments and rerun, ends exactly as
an uninterrupted run of the same command: every row once, the same documents, verdicts, pairs, grades and metrics,
the same manifests, results.json and run.json summary. (Rollouts: tests/test_rollouts_job.py; the helper:
tests/killing.py.)

Each test runs the stage once uninterrupted (recording the files it commits, in order), then in a fresh folder kills
it -- at a moment in the work (:func:`killing.kill_at`: k of N shards written) or right before or after one of those
commits (:func:`killing.kill_on_commit`: e.g. after the manifest, before run.json) -- reruns it to the end and
compares. One kill per stage that pays a model load per process; three for pairs, whose processes are cheap. The
default seeds pick informative moments (named at each ``rng``); ``WORKBENCH_KILL_SEED=<n>`` picks others.

What is compared: every output file (Parquet as rows, JSON parsed, the rest byte for byte) except the run's own
bookkeeping: ``config.yaml`` (names the output folder), ``env.json`` (the machine, rewritten by each invocation),
``metrics.jsonl`` (an append-only event log: each invocation logs its own throughput) and ``run.json`` (a finish
time; its summary is compared). Eval results drop only ``created`` and ``timings``, and ``report.md`` must be the
rendering of the results.json beside it (the pair was written by one invocation).
"""

import json
import os
import re
from pathlib import Path

import yaml

from conftest import FIXTURES, REPO
from killing import (assert_same, kill_at, kill_on_commit, record_commits, rng, run_to_end, shards_at_least,
                     snapshot, temp_files)
from workbench.store import shards

BOOKKEEPING = ("config.yaml", "env.json", "metrics.jsonl", "run.json")


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def outputs(run_dir: Path, skip=()) -> dict:
    """The run's outputs for comparison (module docstring), with run.json's summary."""
    got = snapshot(run_dir, skip=(*BOOKKEEPING, *skip))
    got["run.json:summary"] = json.loads((run_dir / "run.json").read_text())["summary"]
    return got


def commit_points(commits: list[str]) -> list[str]:
    """The files an uninterrupted run committed, each once, in order; env.json files (rewritten by every invocation,
    so "the first env.json" is not a point of progress) left out."""
    return [c for c in dict.fromkeys(commits) if Path(c).name != "env.json"]


def kill_between_commits(args, root: Path, points: list[str], r, n: int, env=None) -> list[str]:
    """SIGKILL ``n`` successive invocations, each right before or after committing a later file of ``points`` (a
    seeded sorted sample), each resuming the previous one. Returns the moments, for messages.

    A resumed invocation may rightly not write a file again (the corpus-embedding cache it now finds): it then runs
    to the end, and the next invocations find the job done -- still a kill and a rerun to compare."""
    moments = []
    for i in sorted(r.sample(range(len(points)), n)):
        path = points[i]
        # After the last commit (run.json) the job is over: nothing to test. (Before config.yaml, the folder holds
        # only a temp file: the rerun must start afresh.)
        before = path == points[-1] or r.random() < 0.5
        # The first kill, on a fresh folder, must land: a fresh run commits every point.
        moments.append(kill_on_commit(args, root, path, before=before, may_finish=bool(moments), env=env).moment)
    return moments


# ----------------------------------------------------------------------------------------------- generate documents


def test_generate_documents_killed_anywhere(tmp_path):
    """hf on tiny-llama, one query per shard: killed mid-work (once k of 4 shards exist), resumed: the same sampled
    documents (each unit seeded from its index alone), grades and provenance, each query once."""
    def args(out):
        return ["generate", "documents", "--config", "recipes/tiny/documents.yaml", f"output_dir={out}",
                "backend.backend=hf", "sharding.shard_size=1", "sampling.max_tokens=12"]

    ref, killed = tmp_path / "ref", tmp_path / "killed"
    run_to_end(args(ref))
    n_shards = len(shards.read_manifest(ref / "documents")["shards"])
    assert n_shards == 4, "the fixture's 4 train queries, one per shard"
    r, seed = rng(11)
    k = r.randint(0, n_shards - 2)  # 0: the shard folder exists, the first unit is being generated
    moments = [kill_at(args(killed), shards_at_least(killed / "documents", k)).moment]
    run_to_end(args(killed))

    what = f"documents killed {moments} (WORKBENCH_KILL_SEED={seed})"
    print(what)
    assert_same(outputs(killed), outputs(ref), what)
    rows = shards.read_rows(killed / "documents")
    assert sorted(r_["query_id"] for r_ in rows) == ["q1", "q2", "q3", "q4"], what  # each query exactly once
    synthetic = [d for r_ in rows for d, p in zip(r_["docs"], r_["provenance"]) if p.startswith("synthetic")]
    assert len(synthetic) == 16 and len(set(synthetic)) > 8, "sampled documents differ: the match is not vacuous"
    assert temp_files(killed, ".shard-*.tmp-*") == [], what


# ----------------------------------------------------------------------------------------------- verify


def _rollout(pid: str, idx: int, completion: str, reference: str) -> dict:
    return {"prompt_id": pid, "prompt": f"Question {pid}: what is the answer?", "sample_idx": idx,
            "completion": completion, "prompt_token_ids": [1, 2, 3], "completion_token_ids": [4, 5, 6],
            "reference": reference, "finish_reason": "stop", "num_tokens": 3, "logprob": -3.0, "model": "m",
            "backend": "hf"}


def make_rollouts(folder: Path, n_shards: int = 6) -> Path:
    """A finished rollouts run: per shard one prompt, one right and one wrong answer."""
    out = folder / "rollouts"
    for k in range(n_shards):
        ref = str(10 + k)
        shards.write_shard(out, k, [_rollout(f"p{k}", 0, f"So it is {ref}. #### {ref}", ref),
                                    _rollout(f"p{k}", 1, f"I think it is {k}", ref)])
    shards.finalize(out, [2] * n_shards, {"job": "rollouts", "chat": True, "system_prompt": None})
    return folder


def test_verify_killed_anywhere(tmp_path):
    """rollout_aware (math + an LLM judge on tiny-llama, sampling at T=1), killed mid-work so that two processes
    share the units: the judge's sampled answers, the verdicts and the manifest's stats -- with the judge's counters,
    which live in the verifier object -- equal the uninterrupted run's."""
    make_rollouts(tmp_path / "roll")
    recipe = write_recipe(tmp_path / "verify.yaml", {
        "job": "verify", "run_name": "kill-verify", "input_dir": str(tmp_path / "roll"),
        "verifier": {"name": "rollout_aware", "options": {"judge": {
            "model": "tiny-llama", "backend": {"backend": "hf"}, "temperature": 1.0, "max_tokens": 6}}}})

    def args(out):
        return ["verify", "--config", recipe, f"output_dir={out}"]

    ref, killed = tmp_path / "ref", tmp_path / "killed"
    run_to_end(args(ref))
    r, seed = rng(12)
    k = r.randint(1, 3)  # of 6 shards: units on both sides of the kill; two or more left (units are quick)
    moments = [kill_at(args(killed), shards_at_least(killed / "verdicts", k)).moment]
    run_to_end(args(killed))

    what = f"verify killed {moments} (WORKBENCH_KILL_SEED={seed})"
    print(what)
    assert_same(outputs(killed), outputs(ref), what)
    rows = shards.read_rows(killed / "verdicts")
    assert sorted((r_["prompt_id"], r_["sample_idx"]) for r_ in rows) == [(f"p{i}", j) for i in range(6)
                                                                          for j in range(2)], what
    stats = shards.read_manifest(killed / "verdicts")["stats"]
    assert stats["rows"] == 12 and stats["verifier_judge_total"] == 12, f"{what}: {stats}"  # every row judged once
    raws = [json.loads(r_["details"]).get("consistency_raw") for r_ in rows]
    assert len(set(raws)) > 6, "sampled judge answers differ: the match is not vacuous"
    assert temp_files(killed, ".shard-*.tmp-*") == [], what


# ----------------------------------------------------------------------------------------------- pairs


def make_verdicts(folder: Path) -> Path:
    """A finished verify run: 8 prompts x 3 samples with distinct scores, in 2 shards."""
    out = folder / "verdicts"
    for k in range(2):
        rows = []
        for p in range(4 * k, 4 * k + 4):
            for j, score in enumerate([0.0, 0.5 + 0.05 * p, 1.0]):
                rows.append({**_rollout(f"p{p}", j, f"answer {p}.{j}", "1"), "score": score, "passed": score == 1.0,
                             "verifier": "math", "details": json.dumps({"extracted": f"{p}.{j}"})})
        shards.write_shard(out, k, rows)
    shards.finalize(out, [12, 12], {"job": "verify", "chat": True, "system_prompt": "Be brief."})
    return folder


def test_pairs_killed_anywhere(tmp_path):
    """pairs writes two finished folders (train, test), counts.json and run.json: killed right before or after three
    random ones of those commits in turn, it ends with the uninterrupted pairs, split and counts."""
    make_verdicts(tmp_path / "verify")
    recipe = write_recipe(tmp_path / "pairs.yaml", {
        "job": "pairs", "run_name": "kill-pairs", "input_dir": str(tmp_path / "verify"), "strategy": "margin",
        "margin": 0.1, "max_pairs_per_prompt": 2, "test_fraction": 0.25,
        "prune": {"drop_all_passed": False, "drop_none_passed": False}})

    def args(out):
        return ["pairs", "--config", recipe, f"output_dir={out}"]

    ref, killed = tmp_path / "ref", tmp_path / "killed"
    points = commit_points(record_commits(args(ref), ref))
    assert points == ["config.yaml", "pairs/shard-00000.parquet", "pairs/manifest.json",
                      "pairs_test/shard-00000.parquet", "pairs_test/manifest.json", "pairs/counts.json", "run.json"]
    r, seed = rng(8)  # by default: before the train shard, after its manifest, before the test shard
    moments = kill_between_commits(args(killed), killed, points, r, 3)
    run_to_end(args(killed))

    what = f"pairs killed {moments} (WORKBENCH_KILL_SEED={seed})"
    print(what)
    assert_same(outputs(killed), outputs(ref), what)
    train, test = shards.read_rows(killed / "pairs"), shards.read_rows(killed / "pairs_test")
    assert len(train) == 12 and len(test) == 4, what  # 2 pairs per prompt; 2 of 8 prompts held out
    assert temp_files(killed, ".shard-*.tmp-*") == [], what


# ----------------------------------------------------------------------------------------------- lists


def scripted_grader(cfg, seed):
    """A judge for this test (the lists job imports it by name): the grade written in the document as [judge=g];
    none written -> unparseable."""
    def grade(pairs):
        return [int(m.group(1)) if (m := re.search(r"\[judge=(\d)\]", doc)) else None for _, doc in pairs]
    return grade


def make_documents(folder: Path) -> Path:
    """A finished documents run: 4 queries x (synthetic grades 3/2/1/0 + the real positive), in 2 shards."""
    from workbench.store.beir import doc_text, load_corpus

    corpus = load_corpus(FIXTURES / "beir_tiny")
    queries = {"q1": ("Does vitamin D help bones?", "d1"), "q2": ("Do statins reduce heart attack risk?", "d3"),
               "q3": ("Does exercise help depression?", "d4"), "q4": ("Why do central banks raise interest rates?",
                                                                      "d9")}
    rows = []
    for i, (qid, (query, pos)) in enumerate(queries.items()):
        judged = {3: 3, 2: (2, 0, 2, 3)[i], 1: 1, 0: (0, 0, 1, 0)[i]}
        rows.append({"query_id": qid, "query": query,
                     "docs": [f"grade {g} passage for {query} [judge={judged[g]}]" for g in (3, 2, 1, 0)]
                     + [doc_text(corpus[pos])],
                     "grades": [3, 2, 1, 0, 3], "provenance": ["synthetic:tiny-llama"] * 4 + ["real:positive"]})
    out = folder / "documents"
    shards.write_shard(out, 0, rows[:2])
    shards.write_shard(out, 1, rows[2:])
    shards.finalize(out, [2, 2], {"job": "documents", "model": "tiny-llama"})
    return folder


def test_lists_killed_anywhere(tmp_path, tiny_bert):
    """Calibration (judged/ shards, calibration.json/.md/.png), dual consistency (consistency.json), mined negatives
    (a corpus-embedding cache) and the lists shards: killed right before or after a random one of those commits, it
    ends with the uninterrupted rows, reports and counts."""
    from test_lists_job import assert_minable

    make_documents(tmp_path / "docs")
    assert_minable(shards.read_rows(tmp_path / "docs" / "documents"), tiny_bert)  # 2 negatives per query to mine
    recipe = write_recipe(tmp_path / "lists.yaml", {
        "job": "lists", "run_name": "kill-lists", "input_dir": str(tmp_path / "docs"), "embedding_model": "tiny-bert",
        "calibration": {"enabled": True, "grader": "test_kill_anywhere_stages:scripted_grader", "batch_size": 3,
                        "max_gap": 1},
        "consistency": {"enabled": True, "k": 8, "threshold": -1.0, "on_fail": "drop_document"},
        "negatives": {"enabled": True, "corpus": str(FIXTURES / "beir_tiny"), "qrels_split": "train",
                      "num_negatives": 2, "pool_size": 10, "false_negative_ratio": 1.0},
        "sharding": {"shard_size": 1}})
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))}

    def args(out):
        return ["lists", "--config", recipe, f"output_dir={out}"]

    ref, killed = tmp_path / "ref", tmp_path / "killed"
    points = commit_points(record_commits(args(ref), ref, env=env))
    for f in ("judged/manifest.json", "calibration.json", "calibration.png", "consistency.json", "lists/manifest.json"):
        assert f in points
    r, seed = rng(23)  # by default: after consistency.json, before the corpus embeddings and the lists shards
    moments = kill_between_commits(args(killed), killed, points, r, 1, env=env)
    run_to_end(args(killed), env=env)

    what = f"lists killed {moments} (WORKBENCH_KILL_SEED={seed})"
    print(what)
    assert_same(outputs(killed), outputs(ref), what)
    rows = shards.read_rows(killed / "lists")
    assert [r_["query_id"] for r_ in rows] == ["q1", "q2", "q3", "q4"], what
    assert sum(p == "real:mined-softmax" for r_ in rows for p in r_["provenance"]) == 8, what
    # Per-unit mining metrics are logged before the unit's shard is committed, so a redone unit logs twice: each line
    # names its unit, and the last line per unit sums to what the shards hold.
    log = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    last = {m["unit"]: m for m in log if "negatives/mined" in m}
    assert sorted(last) == [0, 1, 2, 3] and sum(m["negatives/mined"] for m in last.values()) == 8, what
    assert temp_files(killed, ".shard-*.tmp-*") == [], what


# ----------------------------------------------------------------------------------------------- eval retrieval


def eval_results(run_dir: Path) -> dict:
    """results.json without what may differ between two runs of one command (when, and how long)."""
    from workbench_eval.report import read_results

    res = read_results(run_dir)
    return {k: v for k, v in res.items() if k not in ("created", "timings")}


def check_report(run_dir: Path, title=None) -> None:
    from workbench_eval.report import read_results, render_report

    assert (run_dir / "report.md").read_text() == render_report(read_results(run_dir), title), \
        "report.md is not the rendering of the results.json beside it"


def test_eval_retrieval_killed_anywhere(tmp_path, tiny_bert):
    """tiny-bert on the tiny BEIR fixture with a private embedding cache: killed right before or after a random one
    of its commits (the cached corpus embeddings, run.trec, results.json, report.md, run.json), it ends with the
    uninterrupted run file and metrics."""
    def args(root):
        return ["eval", "retrieval", "--config", "recipes/tiny/eval_retrieval.yaml", f"output_dir={root / 'run'}",
                f"model.name={tiny_bert}"]

    def env(root):  # the cache lives under WORKBENCH_HOME: one per run, or the second would only read the first's
        return {"WORKBENCH_HOME": str(root / "home")}

    ref, killed = tmp_path / "ref", tmp_path / "killed"
    points = commit_points(record_commits(args(ref), ref, env=env(ref)))
    assert any(p.startswith("home/cache/embeddings/") for p in points) and "run/results.json" in points
    r, seed = rng(5)  # by default: before results.json (run.trec written)
    moments = kill_between_commits(args(killed), killed, points, r, 1, env=env(killed))
    run_to_end(args(killed), env=env(killed))

    what = f"eval retrieval killed {moments} (WORKBENCH_KILL_SEED={seed})"
    print(what)
    assert eval_results(killed / "run") == eval_results(ref / "run"), what
    assert_same(outputs(killed / "run", skip=("results.json", "report.md")),
                outputs(ref / "run", skip=("results.json", "report.md")), what)
    check_report(killed / "run")
    assert temp_files(killed, ".shard-*.tmp-*") == [], what


# ----------------------------------------------------------------------------------------------- eval reasoning


def test_eval_reasoning_killed_anywhere(tmp_path):
    """hf on tiny-llama: killed right before or after a random one of its commits (the nested rollouts job's shard,
    manifest and run.json, samples.parquet, results.json, report.md, run.json ...), resumed: the same samples,
    verdicts and metrics as the uninterrupted run. (Kills mid-generation: the rollouts tests.)"""
    def args(out):
        return ["eval", "reasoning", "--config", "recipes/tiny/eval_reasoning.yaml", f"output_dir={out}",
                "backend.backend=hf"]

    ref, killed = tmp_path / "ref", tmp_path / "killed"
    points = commit_points(record_commits(args(ref), ref))
    assert {"prompts.jsonl", "samples.parquet"} <= set(points), "every file is written atomically (temp + rename)"
    r, seed = rng(30)  # by default: after report.md, before run.json
    moments = kill_between_commits(args(killed), killed, points, r, 1)
    run_to_end(args(killed))

    what = f"eval reasoning killed {moments} (WORKBENCH_KILL_SEED={seed})"
    print(what)
    assert eval_results(killed) == eval_results(ref), what
    skip = ("results.json", "report.md")  # compared above; the nested run's bookkeeping is skipped by name
    assert_same(outputs(killed, skip=skip), outputs(ref, skip=skip), what)
    check_report(killed, title="Reasoning evaluation (gsm8k)")
    samples = shards.read_rows(killed / "generations" / "rollouts")
    assert len(samples) == 16 and len({s["completion"] for s in samples}) > 8, what
    assert temp_files(killed, ".shard-*.tmp-*") == [], what
