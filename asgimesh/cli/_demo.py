"""``asgimesh demo``: the whole example mesh on this machine, with the dashboard."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(commands: Any) -> None:
    demo = commands.add_parser("demo", help="run the example mesh on this machine")
    demo.add_argument("--port", type=int, default=7070, help="control plane port (default 7070)")
    demo.add_argument(
        "--state-dir", type=Path, default=Path(".demo"), help="where logs and state go"
    )
    demo.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after this many seconds (default: Ctrl-C)",
    )
    demo.set_defaults(handler=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    from .._demo.runner import run_demo
    from .._logging import configure_logging

    configure_logging("console")
    return run_demo(state_dir=args.state_dir, duration=args.duration, port=args.port)
