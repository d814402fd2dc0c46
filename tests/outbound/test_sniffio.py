"""The sniffio trap: httpcore 1.0's async pool runs ``import sniffio`` each time it sets up a
lock, and where sniffio is absent (current anyio no longer installs it) every one of those
imports fails only after walking ``sys.path``. asgimesh declares sniffio, so a plain
``pip install asgimesh`` takes the fast path; ``bench/bench_outbound.py`` measures the cost in a
clean venv with and without it."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import FakeUpstreams, subprocess_env

ROOT = Path(__file__).resolve().parents[2]

#: A fresh interpreter with trio hidden (in the dev venv trio would bring sniffio in, which a
#: user's install does not have): one async call through the mesh, then the number of
#: ``import sniffio`` that still reach the import system over the next calls.
_PROBE = """
import asyncio, json, sys
sys.modules["trio"] = None  # as in an install without trio: httpcore sees it is absent
lookups = []

class Lookups:
    def find_spec(self, name, path=None, target=None):
        if name == "sniffio":
            lookups.append(name)

sys.meta_path.insert(0, Lookups())
import httpx
from asgimesh import AsyncMeshTransport, MeshRuntime, MeshSettings

async def main():
    policy = {"services": {"pay": {"endpoints": [sys.argv[1]]}}}
    runtime = MeshRuntime(MeshSettings(service="probe", policy=json.dumps(policy)), start=False)
    async with httpx.AsyncClient(transport=AsyncMeshTransport(runtime=runtime)) as client:
        statuses = [(await client.get("http://pay/")).status_code]
        first = len(lookups)
        for _ in range(20):
            statuses.append((await client.get("http://pay/")).status_code)
    print(json.dumps({"statuses": sorted(set(statuses)), "first": first,
                      "later": len(lookups) - first, "imported": "sniffio" in sys.modules}))

asyncio.run(main())
"""


def test_sniffio_is_a_declared_dependency() -> None:
    """Not an extra: the default install must have it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [dep.split(">")[0].split("=")[0].split(";")[0].strip() for dep in project["dependencies"]]
    assert "sniffio" in names, project["dependencies"]


def test_async_calls_do_not_repeat_the_failing_sniffio_import(
    fake_upstreams: FakeUpstreams,
) -> None:
    [url] = fake_upstreams.get(1)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, url],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["statuses"] == [200]
    assert seen["imported"] is True
    # Without sniffio every call would look it up again (about five times per call).
    assert seen["later"] == 0, seen
