"""Run folders: start, resume, refuse; never overwrite a finished run silently."""

import json

import pytest

from workbench.store.runs import RunError, open_run


def test_start_writes_config_env_metrics(tmp_path):
    run = open_run(tmp_path / "r", {"a": 1}, quiet=True)
    assert not run.resumed
    for f in ("config.yaml", "env.json", "metrics.jsonl"):
        assert (run.path / f).exists()
    env = json.loads((run.path / "env.json").read_text())
    assert {"packages", "git_commit", "cpu_count", "torch_threads", "gpus"} <= set(env)
    run.log_metrics({"loss": 1.5}, step=3)
    assert json.loads((run.path / "metrics.jsonl").read_text())["loss"] == 1.5


def test_resume_same_config_refuse_different(tmp_path):
    run = open_run(tmp_path / "r", {"a": 1}, quiet=True)
    assert open_run(tmp_path / "r", {"a": 1}, quiet=True).resumed
    (run.path / "shard-00000.parquet").write_bytes(b"output")  # the run made progress: it is protected
    with pytest.raises(RunError, match="keys differ: a"):
        open_run(tmp_path / "r", {"a": 2}, quiet=True)


def test_finished_run_is_never_silently_overwritten(tmp_path, capsys):
    run = open_run(tmp_path / "r", {"a": 1}, quiet=True)
    (run.path / "result.txt").write_text("precious")
    run.mark_done({"x": 1})
    again = open_run(tmp_path / "r", {"a": 1})
    assert again.done and (run.path / "result.txt").exists()
    assert "finished; nothing to redo" in capsys.readouterr().err
    with pytest.raises(RunError, match="finished run with a different config"):
        open_run(tmp_path / "r", {"a": 2}, quiet=True)
    fresh = open_run(tmp_path / "r", {"a": 2}, overwrite=True, quiet=True)
    assert not fresh.done and not (fresh.path / "result.txt").exists()


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "x.txt").write_text("not a run")
    with pytest.raises(RunError, match="not a workbench run folder"):
        open_run(tmp_path / "r", {"a": 1}, quiet=True)


def test_a_run_killed_while_writing_its_config_starts_fresh(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / ".config.yaml.tmp-1234").write_text("half")
    run = open_run(tmp_path / "r", {"a": 1}, quiet=True)
    assert not run.resumed and (run.path / "config.yaml").exists()
    assert not (run.path / ".config.yaml.tmp-1234").exists()
