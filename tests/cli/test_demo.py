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
    for name in ("control-plane", "frontend", "orders", "payments-1", "payments-2-flaky"):
        assert (state / "logs" / f"{name}.log").exists()
    # Ctrl-C or the end: it says what it stopped.
    assert "stopped: frontend (pid" in proc.stdout and "control-plane (pid" in proc.stdout
    # Each printed command works as printed (run from the same directory).
    commands = [line.split("$ ", 1)[1] for line in proc.stdout.splitlines() if "$ " in line]
    assert any("policy apply" in c for c in commands) and any("status" in c for c in commands)
    # The apps handled the flaky replica's 503s without a traceback in any log.
    for log in (state / "logs").glob("*.log"):
        assert "Traceback" not in log.read_text(), log.name


def test_demo_commands_work_as_printed(tmp_path) -> None:
    """Start the demo, run every command it prints while it runs, then stop it with Ctrl-C."""
    import signal

    state = tmp_path / "demo"
    demo = subprocess.Popen(
        [sys.executable, "-m", "asgimesh", "demo", "--duration", "90",
         "--state-dir", str(state), "--port", str(free_port())],
        env=subprocess_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    lines = []
    try:
        for line in demo.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        commands = [line.split("$ ", 1)[1].strip() for line in lines if "$ " in line]
        assert len(commands) >= 8, "".join(lines)
        for command in commands:
            ran = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=subprocess_env(),
                                 capture_output=True, text=True, timeout=60)  # fmt: skip
            assert ran.returncode == 0, (command, ran.stdout, ran.stderr)
        shop = subprocess.run(["bash", "-c", commands[0]], cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert '"frontend":"ok"' in shop.stdout.replace(" ", "") and "replica" in shop.stdout
        # Orders charges with its verified identity (a token between plain-HTTP servers); an
        # anonymous charge straight to payments is refused by the `from: orders` rule.
        (charge,) = [c for c in commands if c.endswith("/charge")]
        anonymous = subprocess.run(["bash", "-c", charge], cwd=tmp_path, capture_output=True,
                                   text=True, timeout=60)  # fmt: skip
        assert '"error":"forbidden"' in anonymous.stdout.replace(" ", ""), anonymous.stdout
    finally:
        demo.send_signal(signal.SIGINT)
        rest = demo.communicate(timeout=60)[0]
    assert "stopped: frontend (pid" in rest
