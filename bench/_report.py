"""Shared by the benchmarks: run-to-run statistics and writing a section of BENCHMARKS.md.

Each benchmark owns one section, fenced by ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``,
and replaces only that section, so benchmarks can be re-run one at a time.
"""

from __future__ import annotations

import platform
import re
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def machine() -> str:
    import os

    python = f"{platform.python_implementation()} {platform.python_version()}"
    return f"{python}, {os.cpu_count()} cores, {platform.machine()}"


def write_section(name: str, body: str, command: str) -> None:
    """Replace (or append) the section ``name`` of BENCHMARKS.md with ``body``."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"<!-- bench:{name} -->\n{body.rstrip()}\n\n"
        f"Command: `{command}` — {stamp}, {machine()}.\n<!-- /bench:{name} -->"
    )
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    tag = re.escape(name)
    pattern = re.compile(rf"<!-- bench:{tag} -->.*?<!-- /bench:{tag} -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    BENCHMARKS.write_text(text)
