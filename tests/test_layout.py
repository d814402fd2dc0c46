"""Guards that keep the package's layout from drifting back.

The data plane (what runs inside every service: inbound, outbound, policy and its sources,
identity, telemetry, the runtime) must never import the control-plane server, the CLI, the
demo or the test helpers: a service pays for what it imports, at start and in memory, and a
server dependency on the request path is how a mesh's layers rot.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "asgimesh"

#: Packages and modules of the data plane.
DATA_PLANE = ("inbound", "outbound", "policy", "identity", "telemetry")
DATA_PLANE_MODULES = (
    "__init__",
    "_runtime",
    "_context",
    "_errors",
    "_log",
    "_etcd",
    "_etcd_access",
    "_etcd_errors",
    "_ssl",
    "_backoff",
    "_durations",
    "_wire",
    "settings",
)
FORBIDDEN = ("asgimesh.controlplane", "asgimesh.cli", "asgimesh._demo", "asgimesh.testing")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved, wherever the import is."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def _data_plane_files() -> list[Path]:
    files = [PACKAGE / f"{module}.py" for module in DATA_PLANE_MODULES]
    for package in DATA_PLANE:
        files.extend(sorted((PACKAGE / package).rglob("*.py")))
    return files


def test_the_walk_sees_the_whole_data_plane() -> None:
    files = _data_plane_files()
    assert all(path.exists() for path in files), [str(p) for p in files if not p.exists()]
    assert PACKAGE / "policy" / "sources" / "_watch.py" in files
    # The walker resolves relative imports: a known one must show up under its full name.
    assert "asgimesh.policy._signed" in _imports(PACKAGE / "policy" / "sources" / "_watch.py")


@pytest.mark.parametrize("path", _data_plane_files(), ids=lambda p: _module_name(p))
def test_the_data_plane_never_imports_the_server_cli_demo_or_test_helpers(path: Path) -> None:
    bad = sorted(
        target
        for target in _imports(path)
        if any(target == f or target.startswith(f + ".") for f in FORBIDDEN)
    )
    assert bad == [], f"{_module_name(path)} imports {bad}"


def test_the_control_plane_stores_do_not_import_their_own_factory() -> None:
    stores = PACKAGE / "controlplane" / "stores"
    for name in ("_sqlite.py", "_etcd.py"):
        assert "asgimesh.controlplane.stores" not in _imports(stores / name)


_PROBE = """
import json, sys
from asgimesh import MeshRuntime
runtime = MeshRuntime(start=False)
runtime.close()
print(json.dumps({
    "source": type(runtime.source).__name__,
    "controlplane": sorted(m for m in sys.modules if m.startswith("asgimesh.controlplane")),
}))
"""


@pytest.mark.parametrize(
    "config", ["http://127.0.0.1:9/?refresh=30s", "etcd://127.0.0.1:9/team"], ids=["http", "etcd"]
)
def test_a_runtime_following_a_control_plane_leaves_the_server_unimported(config: str) -> None:
    """A fresh interpreter (nothing else imported) builds a runtime on a control-plane URL
    (port 9 on loopback: refused at once, so the first load gives up quickly)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("MESH_") and key != "SPIFFE_CREDENTIAL_FOLDER"
    }
    env |= {"MESH_CONFIG": config, "MESH_SERVICE": "orders"}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PACKAGE.parent,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["source"] == "ControlPlaneSource"
    assert seen["controlplane"] == []


SUBPACKAGES = ("inbound", "outbound", "policy", "identity", "telemetry", "controlplane", "cli")


def _subpackage_files() -> list[Path]:
    return [path for package in SUBPACKAGES for path in sorted((PACKAGE / package).rglob("*.py"))]


@pytest.mark.parametrize("path", _subpackage_files(), ids=lambda p: _module_name(p))
def test_subpackages_use_each_others_public_names(path: Path) -> None:
    """``from ..policy import InboundPolicy``, not ``from ..policy._model import ...``: a
    package's private modules may move without its siblings noticing. The neutral top-level
    modules (``asgimesh._log``, ``asgimesh._wire``, ...) are shared by all and exempt."""
    own = _module_name(path).split(".")[1]
    bad = []
    for target in _imports(path):
        parts = target.split(".")
        if len(parts) >= 3 and parts[0] == "asgimesh" and parts[1] in SUBPACKAGES:
            private = any(p.startswith("_") and not p.startswith("__") for p in parts[2:])
            if parts[1] != own and private:
                bad.append(target)
    assert sorted(set(bad)) == [], f"{_module_name(path)} imports private {sorted(set(bad))}"
