"""``asgimesh policy ...``: check a policy document locally (and talk to a control plane)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._errors import PolicyError
from ..policy import parse_document, read_policy_file, validate_document

__all__ = ["register"]


def register(commands: Any) -> None:
    policy = commands.add_parser("policy", help="check, apply, get or roll back the mesh policy")
    actions = policy.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate a policy file without applying it")
    check.add_argument("file", help="policy document (.yaml, .yml, .json, .toml), or - for stdin")
    check.set_defaults(handler=check_command)


def check_command(args: argparse.Namespace) -> int:
    """Print every problem (exit 1) or a summary of what the document sets (exit 0)."""
    try:
        if args.file == "-":
            document = parse_document(sys.stdin.read(), "yaml", "<stdin>")
        else:
            document = read_policy_file(args.file)
        policy = validate_document(document, args.file)
    except PolicyError as error:
        print(f"{args.file}: {len(error.problems)} problem(s)", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    d = policy.defaults
    print(f"{args.file}: valid policy (schema version {policy.version})")
    print(
        f"  defaults: timeout {d.timeout:g}s, per-try {d.per_try_timeout:g}s, "
        f"{d.retries.attempts} retries, {d.load_balancer}"
    )
    print(f"  services: {', '.join(sorted(policy.services)) or '(none)'}")
    print(f"  inbound rules: {', '.join(sorted(policy.inbound)) or '(none)'}")
    return 0
