"""``asgimesh policy check`` as an operator runs it: a real process, its output and exit code."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import subprocess_env


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asgimesh", *args],
        env=subprocess_env(), capture_output=True, text=True, input=stdin, timeout=60,
    )


def test_valid_file_prints_a_summary(tmp_path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("defaults: {timeout: 3s}\nservices:\n  payments: {endpoints: [http://127.0.0.1:8001]}\n")
    proc = run("policy", "check", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "valid policy" in proc.stdout
    assert "timeout 3s" in proc.stdout
    assert "services: payments" in proc.stdout


def test_invalid_file_lists_every_problem_and_exits_1(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("services:\n  payments:\n    timeout: fast\n    timout: 1s\n")
    proc = run("policy", "check", str(path))
    assert proc.returncode == 1
    assert "2 problem(s)" in proc.stderr
    assert 'services.payments.timeout: expected a duration ("250ms", "2s", "1m" or a number of seconds), got "fast"' in proc.stderr
    assert "services.payments.timout: unknown field" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_file_and_syntax_error_are_one_line_each(tmp_path) -> None:
    proc = run("policy", "check", str(tmp_path / "absent.json"))
    assert proc.returncode == 1
    assert "cannot read" in proc.stderr
    assert "Traceback" not in proc.stderr
    broken = tmp_path / "broken.json"
    broken.write_text('{"defaults": ')
    proc = run("policy", "check", str(broken))
    assert proc.returncode == 1
    assert "invalid JSON at line 1" in proc.stderr


def test_reads_standard_input() -> None:
    proc = run("policy", "check", "-", stdin="defaults:\n  retries: {attempts: 0}\n")
    assert proc.returncode == 0
    assert "0 retries" in proc.stdout


def test_usage_errors_exit_2() -> None:
    proc = run("policy", "frobnicate")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
