"""The example policies are valid as shipped, and the policy reference documents every field."""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from asgimesh.policy import Policy
from tests.conftest import subprocess_env

ROOT = Path(__file__).resolve().parent.parent
POLICIES = sorted((ROOT / "examples" / "policies").glob("*.yaml"))


def test_the_promised_examples_exist() -> None:
    names = {path.stem for path in POLICIES}
    assert {"timeouts", "retries", "fault-drill", "canary", "authorization", "rate-limit"} <= names


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_policy_check_accepts_each_example(path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "asgimesh", "policy", "check", str(path)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "valid policy (schema version 1)" in proc.stdout


def _fields(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[str]:
    """Every field name (as the document spells it) of ``model`` and the models inside it."""
    names: set[str] = set()
    if model in seen:
        return names
    seen.add(model)
    for name, field in model.model_fields.items():
        names.add(field.alias or name)
        stack = [field.annotation]
        while stack:
            kind = stack.pop()
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                names |= _fields(kind, seen)
            stack.extend(typing.get_args(kind))
    return names


def test_policy_reference_documents_every_field() -> None:
    text = (ROOT / "docs" / "policy.md").read_text()
    documented = set(re.findall(r"`([a-z_]+)", text)) | set(re.findall(r"\.([a-z_]+)`", text))
    missing = sorted(_fields(Policy, set()) - documented)
    assert missing == []
    assert len(_fields(Policy, set())) > 30  # the walk reached the nested models


def test_the_shop_readme_runs_as_written(tmp_path: Path) -> None:
    """The shop's by-hand commands, run as printed (ports and the state dir made private):
    the frontend answers through all three services, and payments refuses an anonymous charge
    while it takes orders' (verified by its token)."""
    import contextlib
    import os
    import signal

    from tests.conftest import free_port

    readme = (ROOT / "examples" / "shop" / "README.md").read_text()
    block = readme.split("```console\n", 1)[1].split("```", 1)[0]
    commands = [c.strip() for c in block.replace("\\\n", " ").split("\n$ ") if c.strip()]
    commands[0] = commands[0].removeprefix("$ ")
    ports = {p: str(free_port()) for p in ("7070", "8001", "8002", "8003")}
    lines = [
        "set -euo pipefail",
        "ready() { for _ in $(seq 300); do curl -s -o /dev/null \"$1\" && return 0; sleep 0.1;"
        " done; echo \"not ready: $1\" >&2; return 1; }",
    ]
    for command in commands:
        command = command.split("  #", 1)[0].replace("/tmp/shop-cp", str(tmp_path / "cp"))
        for old, new in ports.items():
            command = command.replace(f":{old}", f":{new}").replace(f"--port {old}", f"--port {new}")
        if command.endswith("&"):  # its output to a file: an open pipe would hold ours
            command = command[:-1].rstrip() + f" >>{tmp_path / 'services.log'} 2>&1 &"
        lines.append(command)
        port = re.search(r"(?:--port |--bind 127\.0\.0\.1:)(\d+)", command)
        if command.endswith("&") and port:
            path = "/v1/trust-bundle" if "control-plane" in command else "/_mesh/health"
            lines.append(f"ready http://127.0.0.1:{port.group(1)}{path}")
        if command.startswith("curl"):
            lines.append("echo")
    env = subprocess_env()
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    proc = subprocess.Popen(
        ["bash", "-c", "\n".join(lines)], cwd=ROOT / "examples" / "shop", env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the services it started in the background
    services = tmp_path / "services.log"
    log = services.read_text() if services.exists() else ""
    assert proc.returncode == 0, out + err + log
    shop, anonymous = [line.replace(" ", "") for line in out.splitlines() if line.startswith("{")]
    assert '"frontend":"ok"' in shop and '"order":"ok"' in shop, out
    assert '"error":"forbidden"' in anonymous, out
