"""A damaged shard is caught, named and never half-used (issue 23).

Each manifest records every shard's size and sha256, taken from the bytes written, before the rename that commits
the shard. A stage reading a folder checks it against its manifest before it creates anything; ``workbench check
RUN_DIR`` checks a whole run. Four kinds of damage -- a truncated shard, bytes flipped in place (same size), a
missing shard, an extra one -- each through the real CLI of a stage reading it and of ``workbench check``.

What each test closes: the flipped-bytes case fails a check that compares sizes only; the truncated case fails one
that trusts the Parquet footer; the extra case fails one that walks the manifest's list only; "no output folder"
fails a check made after the stage opened its run folder; "one line, no Traceback" fails an error raised by pyarrow;
the recovery test runs the command the error line gives and fails if it does not rewrite exactly the lost shard.

The stage outputs are the cheapest real ones: rollouts written through the shard layer (as the rollouts job writes
them), then the real ``workbench verify`` (math verifier: no model) whose verdicts ``workbench pairs`` reads.
"""

import json
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import run_cli
from killing import kill_on_commit, run_to_end
from workbench.store import shards

DAMAGE = ["truncated", "flipped", "missing", "extra"]
# What the one error line must say for each damage (beyond the shard's path).
SAYS = {"truncated": "records", "flipped": "sha256", "missing": "missing", "extra": "extra shard"}


def rollout(pid: str, idx: int, completion: str, reference: str) -> dict:
    return {"prompt_id": pid, "prompt": f"Question {pid}?", "sample_idx": idx, "completion": completion,
            "prompt_token_ids": [1, 2, 3], "completion_token_ids": [4, 5, 6], "reference": reference,
            "finish_reason": "stop", "num_tokens": 3, "logprob": -3.0, "model": "m", "backend": "hf"}


def make_rollouts(folder: Path, n_shards: int = 4) -> Path:
    """A finished rollouts folder: per shard one prompt with a right and a wrong answer."""
    for k in range(n_shards):
        ref = str(10 + k)
        shards.write_shard(folder / "rollouts", k, [rollout(f"p{k}", 0, f"So it is {ref}. #### {ref}", ref),
                                                    rollout(f"p{k}", 1, f"I think it is {k}", ref)])
    shards.finalize(folder / "rollouts", [2] * n_shards, {"job": "rollouts", "chat": True, "system_prompt": None})
    return folder


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A rollouts folder and the real verify run on it, made once; tests damage copies (:func:`place`)."""
    root = tmp_path_factory.mktemp("integrity")
    roll = make_rollouts(root / "roll")
    run_cli("verify", "--config", "recipes/tiny/verify.yaml", f"input_dir={roll}", f"output_dir={root / 'verify'}")
    return {"roll": roll, "verify": root / "verify"}


def place(src: Path, dst: Path) -> Path:
    """A copy of a run folder that is the run itself: config.yaml's output_dir names the copy, as if it ran there."""
    shutil.copytree(src, dst)
    cfg_file = dst / "config.yaml"
    if cfg_file.exists():
        cfg = yaml.safe_load(cfg_file.read_text())
        cfg["output_dir"] = str(dst)
        cfg_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dst


def damage(folder: Path, how: str, k: int = 1) -> Path:
    """Damage shard k of a shard folder; returns the file the error must name."""
    shard = shards.shard_path(folder, k)
    if how == "truncated":
        data = shard.read_bytes()
        shard.write_bytes(data[:len(data) // 2])
    elif how == "flipped":  # 40 bytes inside the data pages, size unchanged
        data = bytearray(shard.read_bytes())
        for i in range(200, 240):
            data[i] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif how == "missing":
        shard.unlink()
    elif how == "extra":
        extra = shards.shard_path(folder, 9)
        shutil.copy(shard, extra)
        return extra
    return shard


def assert_one_line(proc, shard: Path, how: str) -> str:
    err = proc.stderr.strip()
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr and len(err.splitlines()) == 1, proc.stderr
    assert err.startswith("error: ") and str(shard) in err and SAYS[how] in err, err
    return err


def run_on_damaged(tmp_path, source: Path, output: str, job: str, how: str):
    """Damage a copy of ``source``'s ``output`` shards, run ``job`` (its tiny recipe) on it: (error line, shard, copy).
    The stage must stop in one line before its own run folder exists."""
    run = place(source, tmp_path / "input")
    shard = damage(run / output, how)
    out = tmp_path / job
    proc = run_cli(job, "--config", f"recipes/tiny/{job}.yaml", f"input_dir={run}", f"output_dir={out}", check=False)
    err = assert_one_line(proc, shard, how)
    assert not out.exists(), "the check ran after the stage created its output folder"
    return err, shard, run


@pytest.mark.parametrize("how", DAMAGE)
def test_pairs_stops_on_damaged_verdicts(tmp_path, made, how):
    """The stage reading the damage (pairs on verify's verdicts) stops in one line, before its run folder exists."""
    err, shard, run = run_on_damaged(tmp_path, made["verify"], "verdicts", "pairs", how)
    if how == "extra":
        assert f"rm {shard}" in err
    else:  # the recovery: delete it (unless gone) and rerun the stage that wrote it, with the exact command
        assert err.endswith(f"workbench verify --config {run / 'config.yaml'}"), err
        assert (f"rm {shard} && " in err) == (how != "missing"), err


@pytest.mark.parametrize("how", DAMAGE)
def test_verify_stops_on_damaged_rollouts(tmp_path, made, how):
    """The issue's case: `workbench verify` on damaged rollouts (a pyarrow traceback before)."""
    run_on_damaged(tmp_path, made["roll"], "rollouts", "verify", how)


@pytest.mark.parametrize("how", DAMAGE)
def test_check_names_the_damaged_shard(tmp_path, made, how):
    run = place(made["verify"], tmp_path / "verify")
    shard = damage(run / "verdicts", how)
    proc = run_cli("check", run, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: ") and str(shard) in errors[0], proc.stderr
    assert SAYS[how] in errors[0], errors[0]
    assert any(line.split()[:2] == ["DAMAGED", "verdicts"] for line in proc.stdout.splitlines()), proc.stdout


def test_check_passes_a_good_run(tmp_path, made):
    run = place(made["verify"], tmp_path / "verify")
    proc = run_cli("check", run)
    assert proc.stderr == "", proc.stderr
    assert any(line.split()[:2] == ["ok", "verdicts"] and "sha256" in line for line in proc.stdout.splitlines()), \
        proc.stdout
    manifest = shards.read_manifest(run / "verdicts")
    for s in manifest["shards"]:  # the manifest records what is on disk
        assert {k: s[k] for k in ("size", "sha256")} == shards.file_digest(run / "verdicts" / s["file"])
    # A folder of several runs (a quickstart folder), or one stage output, is checked the same way.
    proc = run_cli("check", tmp_path)
    assert "ok" in proc.stdout and "verify/verdicts" in proc.stdout
    run_cli("check", run / "verdicts")


def test_check_reports_unfinished_and_empty(tmp_path, made):
    run = place(made["verify"], tmp_path / "verify")
    (run / "verdicts" / "manifest.json").unlink()
    proc = run_cli("check", run, check=False)
    assert proc.returncode == 1 and "UNFINISHED" in proc.stdout and "no manifest.json" in proc.stderr, proc
    (tmp_path / "empty").mkdir()
    proc = run_cli("check", tmp_path / "empty", check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "no stage output" in proc.stderr


def test_recovery_command_rewrites_only_the_lost_shard(tmp_path, made):
    """Delete the damaged shard and run the command the error line gives: the finished verify run resumes, rewrites
    that shard alone (byte for byte, as first written) and the reader then runs."""
    run = place(made["verify"], tmp_path / "verify")
    folder = run / "verdicts"
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.glob("shard-*.parquet")}
    shard = damage(folder, "flipped", k=2)
    pairs = ["pairs", "--config", "recipes/tiny/pairs.yaml", f"input_dir={run}", f"output_dir={tmp_path / 'pairs'}"]
    err = run_cli(*pairs, check=False).stderr.strip()
    command = err.rsplit("which resumes and rewrites only what is missing: ", 1)[1]
    rm, rerun = command.split(" && ")
    assert shlex.split(rm) == ["rm", str(shard)]
    shard.unlink()
    argv = shlex.split(rerun)
    assert argv[0] == "workbench"
    resumed = run_cli(*argv[1:])
    assert "shard-00002.parquet listed in its manifest but missing" in resumed.stderr, resumed.stderr
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.glob("shard-*.parquet")}
    assert {n: b for n, (b, _) in after.items()} == {n: b for n, (b, _) in before.items()}
    assert [n for n in before if after[n][1] != before[n][1]] == ["shard-00002.parquet"], "only the lost unit redone"
    assert json.loads((run / "run.json").read_text())["status"] == "done"
    run_cli("check", run)
    run_cli(*pairs)


def test_finished_stage_rerun_refuses_its_own_resized_shard(tmp_path, made):
    """Rerunning the producer without deleting a truncated shard cannot repair it (the unit's shard exists): it says
    so in one line rather than report "complete; nothing to do"."""
    run = place(made["verify"], tmp_path / "verify")
    shard = damage(run / "verdicts", "truncated")
    proc = run_cli("verify", "--config", run / "config.yaml", check=False)
    assert_one_line(proc, shard, "truncated")


def test_old_manifest_without_digests_is_read(tmp_path, made):
    """A manifest from before digests (file and rows only) is still read; its shards are checked for existence and
    their footer's row count (a truncated shard is caught, in one line), which `workbench check` says."""
    run = place(made["verify"], tmp_path / "verify")
    path = run / "verdicts" / "manifest.json"
    manifest = json.loads(path.read_text())
    for s in manifest["shards"]:
        del s["size"], s["sha256"]
    path.write_text(json.dumps(manifest))
    proc = run_cli("check", run)
    assert "without size/sha256" in proc.stdout, proc.stdout
    run_cli("pairs", "--config", "recipes/tiny/pairs.yaml", f"input_dir={run}", f"output_dir={tmp_path / 'p1'}")

    shard = damage(run / "verdicts", "truncated")
    proc = run_cli("pairs", "--config", "recipes/tiny/pairs.yaml", f"input_dir={run}",
                   f"output_dir={tmp_path / 'p2'}", check=False)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(err.splitlines()) == 1, proc.stderr
    assert str(shard) in err and "not a readable Parquet file" in err and not (tmp_path / "p2").exists()
    assert run_cli("check", run, check=False).returncode == 1


def test_digest_is_of_the_bytes_written(tmp_path):
    """finalize records the digest taken when each shard was written, without re-reading it: a shard changed in
    place between its write and the manifest is caught later, not blessed. A shard from before digests (no digest
    file beside it) is hashed at finalize."""
    folder = tmp_path / "out"
    for k in range(3):
        shards.write_shard(folder, k, [{"x": i, "text": f"row {i} of unit {k}"} for i in range(50)])
    written = shards.file_digest(shards.shard_path(folder, 1))
    damage(folder, "flipped", k=1)  # in the data pages: the footer (row counts) still reads
    shards.digest_path(shards.shard_path(folder, 2)).unlink()
    manifest = shards.finalize(folder, [50, 50, 50], {})
    assert {k: manifest["shards"][1][k] for k in ("size", "sha256")} == written
    assert {k: manifest["shards"][2][k] for k in ("size", "sha256")} == shards.file_digest(shards.shard_path(folder, 2))
    found = shards.check_shards(folder)
    assert [(p.path.name, p.kind) for p in found.problems] == [("shard-00001.parquet", "sha256")]


def test_a_shard_never_exists_without_its_digest(tmp_path, made):
    """SIGKILL right after a shard's rename: its digest is already there and describes it; the rerun ends with a
    manifest that `workbench check` passes."""
    out = tmp_path / "verify"
    args = ["verify", "--config", "recipes/tiny/verify.yaml", f"input_dir={made['roll']}", f"output_dir={out}"]
    kill_on_commit(args, tmp_path, "verify/verdicts/shard-00001.parquet")
    shard = out / "verdicts" / "shard-00001.parquet"
    assert json.loads(shards.digest_path(shard).read_text()) == shards.file_digest(shard)
    assert not (out / "verdicts" / "manifest.json").exists()
    run_to_end(args)
    run_cli("check", out)


def test_snapshots_compare_rows_exactly_but_for_the_last_bits_of_a_logprob():
    from killing import assert_same

    row = {"completion_token_ids": [4, 5], "completion": "ab", "logprob": -99.16142606}
    assert_same({"s.parquet": [row]}, {"s.parquet": [{**row, "logprob": -99.16142702}]}, "float32 noise")
    for changed in ({"logprob": -99.17}, {"completion_token_ids": [4, 6]}, {"completion": "ac"}):
        with pytest.raises(AssertionError, match="row 0 differs"):
            assert_same({"s.parquet": [row]}, {"s.parquet": [{**row, **changed}]}, "a real difference")
