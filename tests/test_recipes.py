"""Every shipped recipe loads and validates, and states its exact launch command in its header."""

from pathlib import Path

import pytest
import yaml

from workbench.jobs import load_recipe

from conftest import REPO

RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_recipe_loads_and_states_launch_command(path: Path):
    rel = str(path.relative_to(REPO))
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    launch = [line for line in header if line.startswith("# Launch:")]
    assert launch, f"{rel}: the first comment lines must include '# Launch: <exact command>'"
    assert rel in launch[0], f"{rel}: the launch command must name this recipe's own path"
    cfg = load_recipe(path)
    data = yaml.safe_load(path.read_text())
    assert cfg.run_name and "run_name" in data, f"{rel}: a recipe that produces a run states run_name"
    if "job" in data and data["job"] in ("rollouts", "documents"):
        assert f"generate {data['job']}" in launch[0]


def test_there_are_recipes():
    assert len(RECIPES) >= 5
