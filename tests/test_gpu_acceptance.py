"""scripts/gpu_acceptance.sh --dry-run on CPU: every reduced gpu_* step validates and prints its command."""

import subprocess

from conftest import REPO


def test_dry_run_validates_every_gpu_recipe(tmp_path):
    proc = subprocess.run(["bash", "scripts/gpu_acceptance.sh", "--dry-run", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for recipe in sorted(REPO.glob("recipes/*/gpu_*.yaml")):  # every GPU recipe is exercised by some step
        assert any(str(recipe.relative_to(REPO)) in line for line in lines), recipe
    assert any(line.startswith("weight_sync: ") for line in lines)
    assert "zero3.yaml" in proc.stdout and "zero2.yaml" in proc.stdout  # the recipes' own launchers


def test_dry_run_fails_on_a_broken_step(tmp_path):
    proc = subprocess.run(["bash", "scripts/gpu_acceptance.sh", "--dry-run", "--out", str(tmp_path), "--model", ""],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "FAIL generate: recipe check" in proc.stdout
