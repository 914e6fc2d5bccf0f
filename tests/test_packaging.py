"""Every package is listed in pyproject.toml, and the case library installs with the code."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.relative_to(ROOT).parent.parts) for p in (ROOT / "iratrainer").rglob("__init__.py")}
    assert found <= listed, found - listed
    assert "iratrainer.cases" in listed


def test_case_library_is_package_data():
    from iratrainer.scenario.case import case_dirs

    dirs = case_dirs()
    assert dirs and any(dirs[0].glob("*.toml"))
