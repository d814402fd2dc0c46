"""The ``asgimesh`` command. Each sub-command lives in its own module and registers itself.

The CLI is the one place that configures logging (structlog's advice for libraries: the host
decides); the library only asks for loggers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..__version__ import __version__
from .._errors import ConfigError
from . import _controlplane, _demo, _policy, _serve

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asgimesh",
        description="A proxyless service mesh for Python.",
    )
    parser.add_argument("--version", action="version", version=f"asgimesh {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (_controlplane, _policy, _serve, _demo):
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 1 refused or failed, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        print(f"asgimesh: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
