"""pyproject.toml lists every package (eval/ installs as workbench_eval), so an installed wheel lacks none."""

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_and_nothing_else():
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setup["package-dir"] == {"workbench_eval": "eval"}
    found = set()
    for top, name in (("workbench", "workbench"), ("eval", "workbench_eval")):
        for init in (REPO / top).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / top).parts
            found.add(".".join((name, *rel)))
    assert set(setup["packages"]) == found
