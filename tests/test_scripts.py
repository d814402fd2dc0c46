"""scripts/demo.sh installs only what the demo needs: no system packages, the ``demo`` extra."""

from __future__ import annotations

import tomllib
from pathlib import Path

from asgimesh._demo.runner import NEEDED

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_never_runs_apt() -> None:
    for script in ("demo.sh", "_setup_python.sh"):
        assert "apt-get" not in (ROOT / "scripts" / script).read_text(), script
    assert "ASGIMESH_EXTRA=demo" in (ROOT / "scripts" / "demo.sh").read_text()
    assert "apt-get install" in (ROOT / "scripts" / "_setup.sh").read_text()  # tests only


def test_the_demo_extra_holds_what_the_demo_imports() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    names = {requirement.split(">")[0].split("=")[0] for requirement in extras["demo"]}
    third_party = {name for name in NEEDED if not name.startswith("asgimesh_")}
    assert third_party <= names
    assert "pytest" not in names and "mypy" not in names
