"""``asgimesh demo``: the whole example mesh comes up, serves traffic through retries, and stops."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import free_port, subprocess_env


def test_demo_runs_the_mesh_and_stops_cleanly(tmp_path) -> None:
    state = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "asgimesh",
            "demo",
            "--duration",
            "4",
            "--state-dir",
            str(state),
            "--port",
            str(free_port()),
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dashboard" in proc.stdout
    total, ok = map(
        int,
        re.search(
            r"traffic: (\d+) requests to the frontend, (\d+) answered 200", proc.stdout
        ).groups(),
    )
    # One payments replica fails 30% of charges: retries must hide that from the frontend.
    assert total > 10
    assert ok / total >= 0.95
    token = (state / "admin-token").read_text().strip()
    assert token not in proc.stdout + proc.stderr
    assert (state / "admin-token").stat().st_mode & 0o077 == 0
    for name in ("control-plane", "frontend", "orders", "payments-1", "payments-2"):
        assert (state / "logs" / f"{name}.log").exists()
