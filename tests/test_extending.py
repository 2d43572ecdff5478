"""README "Extending": a new list-wise loss is one file. The README's example, dropped into a copy of the loss package,
is found by the registry and computes what it says (checked by hand on a 2x3 example)."""

import importlib
import math
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(r"a complete list-wise loss, `workbench/losses/listwise/top1_mse\.py`.*?```python\n(.*?)```", text,
                  re.S)
    assert m, "README.md lost its list-wise loss example"
    return m.group(1)


@pytest.fixture
def extended_package(tmp_path, monkeypatch):
    pkg = tmp_path / "listwise_ext"
    shutil.copytree(REPO / "workbench" / "losses" / "listwise", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "top1_mse.py").write_text(readme_example())
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("listwise_ext")
    sys.modules.pop("listwise_ext", None)
    sys.modules.pop("listwise_ext.top1_mse", None)


def test_the_readme_loss_is_one_file_the_registry_finds(extended_package):
    from workbench.losses import listwise

    assert extended_package.NAMES == tuple(sorted((*listwise.NAMES, "top1_mse")))
    cls = extended_package.get("top1_mse")
    assert cls.option_names() == ()
    scores = torch.tensor([[0.0, math.log(3.0), 0.0], [0.0, 0.0, 0.0]])
    grades = torch.tensor([[0.0, math.log(3.0), 0.0], [math.log(2.0), 0.0, 0.0]])
    # Row 1: p = y = (1/5, 3/5, 1/5): 0. Row 2: p = (1/3, 1/3, 1/3), y = (2/4, 1/4, 1/4):
    # (1/6)^2 + 2 (1/12)^2 = 1/36 + 1/72 = 1/24. Mean over rows: 1/48.
    value = cls.loss_fn(scores, grades, None, 1.0)
    assert value.item() == pytest.approx(1 / 48, rel=1e-6)  # float32 softmaxes: ~10 roundings of 6e-8
    mask = torch.tensor([[True, True, True], [True, True, False]])
    padded = cls.loss_fn(scores, grades, mask, 1.0)  # the masked document is dropped from both distributions
    y2 = torch.tensor([2 / 3, 1 / 3]); p2 = torch.tensor([0.5, 0.5])
    assert padded.item() == pytest.approx(((p2 - y2) ** 2).sum().item() / 2, rel=1e-6)
