"""Strict recipes: unknown keys, wrong types, overrides, and `workbench check`."""

from dataclasses import dataclass, field

import pytest

from workbench.config import RecipeError, build, parse_overrides
from workbench.jobs import load_recipe

from conftest import REPO, run_cli


@dataclass
class Inner:
    temperature: float = 0.7
    n: int = 1
    stop: list[str] = field(default_factory=list)


@dataclass
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    mode: str = "a"


def test_unknown_key_names_file_line_path_and_nearest(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("job: rollouts\nrun_name: x\nsampling:\n  n: 2\n  temprature: 0.5\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert f"{p}:5" in msg and "sampling.temprature" in msg and "did you mean 'sampling.temperature'" in msg.lower()


def test_wrong_type_names_expected_type(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("job: rollouts\nrun_name: x\nsampling:\n  n: two\n")
    with pytest.raises(RecipeError, match=r"r.yaml:4: sampling.n: expected int, got str 'two'"):
        load_recipe(p)


def test_bool_is_not_an_int_and_int_is_a_float():
    with pytest.raises(RecipeError, match="expected int"):
        build(Outer, {"name": "a", "inner": {"n": True}})
    assert build(Outer, {"name": "a", "inner": {"temperature": 1}}).inner.temperature == 1.0


def test_missing_required_key_and_list_items():
    with pytest.raises(RecipeError, match="missing required key"):
        build(Outer, {})
    with pytest.raises(RecipeError, match=r"inner.stop.1: expected str"):
        build(Outer, {"name": "a", "inner": {"stop": ["x", 3]}})


def test_overrides_parse_yaml_scalars_and_apply(tmp_path):
    assert parse_overrides(["a.b=3", "c=true", "d=x y", "e=[1, 2]"]) == [
        (["a", "b"], 3), (["c"], True), (["d"], "x y"), (["e"], [1, 2])]
    cfg = load_recipe(REPO / "recipes/tiny/rollouts.yaml", ["sampling.n=5", "run_name=other"])
    assert cfg.sampling.n == 5 and cfg.run_name == "other"
    with pytest.raises(RecipeError, match="command-line override"):
        load_recipe(REPO / "recipes/tiny/rollouts.yaml", ["sampling.nn=5"])


def test_unknown_job_and_missing_job(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("job: rollout\nrun_name: x\n")
    with pytest.raises(RecipeError, match="Did you mean 'rollouts'"):
        load_recipe(p)
    p.write_text("run_name: x\n")
    with pytest.raises(RecipeError, match="missing top-level 'job'"):
        load_recipe(p)


def test_invalid_yaml_names_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("job: rollouts\nrun_name: [x\n")
    with pytest.raises(RecipeError, match=r"r.yaml:\d+: not valid YAML"):
        load_recipe(p)


def test_check_cli_exit_codes(tmp_path):
    ok = run_cli("check", "recipes/tiny/rollouts.yaml", "sampling.n=3")
    assert "valid" in ok.stdout and "n: 3" in ok.stdout
    bad = tmp_path / "typo.yaml"
    bad.write_text((REPO / "recipes/tiny/rollouts.yaml").read_text().replace("max_tokens:", "max_tokns:"))
    proc = run_cli("check", bad, check=False)
    assert proc.returncode == 2
    assert "did you mean 'sampling.max_tokens'" in proc.stderr.lower()
    assert "Traceback" not in proc.stderr
