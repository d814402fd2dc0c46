"""``asgimesh policy ...``: check a policy document locally, apply, get or roll it back on a
control plane."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from .._errors import PolicyError
from ..policy import parse_document, read_policy_file, validate_document
from ._client import EXIT_INVALID, CommandFailedError, add_server_options, call, fail

__all__ = ["register"]


def register(commands: Any) -> None:
    policy = commands.add_parser("policy", help="check, apply, get or roll back the mesh policy")
    actions = policy.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate a policy file without applying it")
    check.add_argument("file", help="policy document (.yaml, .yml, .json, .toml), or - for stdin")
    check.set_defaults(handler=check_command)

    apply = actions.add_parser("apply", help="validate a policy file and store it as a new version")
    apply.add_argument("file", help="policy document (.yaml, .yml, .json, .toml), or - for stdin")
    add_server_options(apply)
    apply.set_defaults(handler=apply_command)

    get = actions.add_parser(
        "get",
        help="print the current policy document (what `policy apply` takes back as is)",
        description="Print the current policy document on stdout, as JSON or YAML, in the shape "
        "`policy apply` accepts, so that get > file, edit, apply file works; the version it is "
        "goes to stderr.",
    )
    get.add_argument(
        "-o", "--output", choices=["json", "yaml"], default="json", help="format (default json)"
    )
    add_server_options(get, token=False)
    get.set_defaults(handler=get_command)

    history = actions.add_parser("history", help="list the versions the control plane keeps")
    add_server_options(history)
    history.set_defaults(handler=history_command)

    rollback = actions.add_parser("rollback", help="make a new version equal to version N")
    rollback.add_argument("version", type=int, help="the version to return to")
    add_server_options(rollback)
    rollback.set_defaults(handler=rollback_command)


def _read(file: str) -> dict[str, Any]:
    if file == "-":
        return parse_document(sys.stdin.read(), "yaml", "<stdin>")
    return read_policy_file(file)


def apply_command(args: argparse.Namespace) -> int:
    """Validate locally first (every problem printed, nothing sent), then PUT it."""
    try:
        document = _read(args.file)
        validate_document(document, args.file)
    except PolicyError as error:
        print(f"{args.file}: {len(error.problems)} problem(s)", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_INVALID
    try:
        response = call(args, "PUT", "/v1/policy", json=document)
    except CommandFailedError as error:
        return fail(error)
    print(f"{args.file}: applied as version {response.json()['version']}")
    return 0


def get_command(args: argparse.Namespace) -> int:
    try:
        response = call(args, "GET", "/v1/policy", admin=False)
    except CommandFailedError as error:
        return fail(error)
    body = response.json()
    print(_render(body["policy"], args.output), end="")
    print(f"asgimesh: policy version {body['version']}", file=sys.stderr)
    return 0


class _PlainDumper(yaml.SafeDumper):
    """Never writes anchors or aliases (equal sub-documents would get them), which policy
    documents refuse."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _render(document: dict[str, Any], fmt: str) -> str:
    """The bare document, not the server's ``{"version", "policy"}`` envelope: ``apply`` would
    refuse ``policy`` as an unknown field. Keys keep the server's order; YAML quotes what a
    YAML 1.1 reader would take for a boolean (``'on'``), which our reader accepts as well."""
    if fmt == "yaml":
        return yaml.dump(document, Dumper=_PlainDumper, sort_keys=False, allow_unicode=True)
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def history_command(args: argparse.Namespace) -> int:
    try:
        response = call(args, "GET", "/v1/policy/history")
    except CommandFailedError as error:
        return fail(error)
    import datetime

    print(f"{'VERSION':>7}  {'CREATED (UTC)':19}  NOTE")
    for entry in response.json()["versions"]:
        created = datetime.datetime.fromtimestamp(entry["created"], datetime.UTC)
        print(f"{entry['version']:>7}  {created:%Y-%m-%d %H:%M:%S}  {entry.get('note') or ''}")
    return 0


def rollback_command(args: argparse.Namespace) -> int:
    try:
        response = call(args, "POST", "/v1/policy/rollback", json={"version": args.version})
    except CommandFailedError as error:
        return fail(error)
    print(f"rolled back to version {args.version}: now version {response.json()['version']}")
    return 0


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
