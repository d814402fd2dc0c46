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
