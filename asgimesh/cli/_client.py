"""What the client commands (``policy apply/get/rollback``, ``token create``, ``status``) share:
finding the server and the token, one HTTP call, and turning failures into one line and an exit
code a script can tell apart."""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

__all__ = [
    "EXIT_INVALID",
    "EXIT_UNAUTHORIZED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "CommandFailedError",
    "add_server_options",
    "call",
]

#: 1: refused (invalid file, unknown version, ...); 2: usage; 3: no server; 4: token refused.
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_UNAUTHORIZED = 4

EPILOG = (
    "exit codes: 0 done, 1 refused (invalid policy, unknown version), 2 usage, "
    "3 control plane unreachable, 4 token missing or wrong"
)


class CommandFailedError(Exception):
    def __init__(self, code: int, message: str, lines: list[str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.lines = lines or []


def add_server_options(parser: argparse.ArgumentParser, *, token: bool = True) -> None:
    parser.add_argument(
        "--server", help="control plane URL (default: MESH_CONFIG when it is an http(s) URL)"
    )
    if token:
        parser.add_argument("--token", help="admin token (default: MESH_ADMIN_TOKEN)")
    parser.add_argument(
        "--ca",
        metavar="FILE",
        help="the mesh's trust bundle (PEM) to pin an https control plane: its certificate "
        "must chain to it and name the control plane's ID (default: MESH_CA)",
    )
    parser.epilog = EPILOG


def _server(args: argparse.Namespace) -> str:
    server = args.server or os.environ.get("MESH_CONFIG", "")
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CommandFailedError(
            EXIT_USAGE,
            "no control plane: pass --server http://host:port or set MESH_CONFIG to its URL"
            + (f" (got {server!r})" if server else ""),
        )
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def call(
    args: argparse.Namespace, method: str, path: str, *, admin: bool = True, **kwargs: Any
) -> httpx.Response:
    """One request to the control plane; :class:`CommandFailedError` for every failure."""
    server = _server(args)
    headers = dict(kwargs.pop("headers", {}))
    if admin:
        token = getattr(args, "token", None) or os.environ.get("MESH_ADMIN_TOKEN")
        if not token:
            raise CommandFailedError(
                EXIT_UNAUTHORIZED, "no admin token: pass --token or set MESH_ADMIN_TOKEN"
            )
        headers["authorization"] = f"Bearer {token}"
    verify, bundle = _verify(args, server)
    try:
        response = httpx.request(
            method, server + path, headers=headers, timeout=10, verify=verify, **kwargs
        )
    except httpx.HTTPError as exc:
        from ..identity import control_plane_tls_problem

        problem = control_plane_tls_problem(exc, bundle) or str(exc) or type(exc).__name__
        raise CommandFailedError(
            EXIT_UNREACHABLE, f"cannot reach the control plane at {server}: {problem}"
        ) from None
    if response.status_code in (401, 403):
        raise CommandFailedError(
            EXIT_UNAUTHORIZED,
            f"the control plane at {server} refused the token: {_detail(response)}",
        )
    if response.status_code == 422:
        body = _json(response)
        problems = [str(p) for p in body.get("problems", [])] if body else []
        raise CommandFailedError(
            EXIT_INVALID, f"the control plane refused it: {_detail(response)}", problems
        )
    if response.status_code >= 400:
        raise CommandFailedError(
            EXIT_INVALID if response.status_code < 500 else EXIT_UNREACHABLE,
            f"the control plane answered {response.status_code}: {_detail(response)}",
        )
    return response


def _verify(args: argparse.Namespace, server: str) -> tuple[ssl.SSLContext, str]:
    """The TLS context for ``server`` and what names its trust bundle in messages. With
    ``--ca`` (or ``MESH_CA``) and ``https://`` the control plane is pinned: its chain must
    verify against that bundle and its URI SAN be the control plane's ID of
    ``MESH_TRUST_DOMAIN`` (default ``mesh.local``). A bundle that cannot be read stops the
    command with one line naming the file."""
    from ..identity import control_plane_context, control_plane_id, load_bundle

    given = getattr(args, "ca", None)
    path = given or os.environ.get("MESH_CA") or None
    label = f"--ca {given}" if given else f"MESH_CA={path}" if path else "the system trust store"
    trust_domain = os.environ.get("MESH_TRUST_DOMAIN") or "mesh.local"
    bundle: bytes | None = None
    if path is not None:
        try:
            bundle = Path(path).read_bytes()
        except OSError as exc:
            raise CommandFailedError(
                EXIT_USAGE, f"{label}: cannot read the trust bundle ({exc.strerror or exc})"
            ) from None
        try:
            load_bundle(bundle)
        except ValueError:
            raise CommandFailedError(
                EXIT_USAGE, f"{label}: expected PEM certificates (the mesh's trust bundle)"
            ) from None
    elif urlsplit(server).scheme == "https":
        print(
            f"asgimesh: warning: the control plane at {server} is checked against the system "
            f"trust store, not pinned to {control_plane_id(trust_domain)}: pass --ca or set "
            "MESH_CA to the mesh's trust bundle",
            file=sys.stderr,
        )
    return control_plane_context(server, trust_domain, bundle, warn=False), label


def _json(response: httpx.Response) -> dict[str, Any] | None:
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _detail(response: httpx.Response) -> str:
    body = _json(response)
    if body and "detail" in body:
        return str(body["detail"])
    return response.text[:200] or response.reason_phrase


def fail(error: CommandFailedError) -> int:
    print(f"asgimesh: {error}", file=sys.stderr)
    for line in error.lines:
        print(f"  {line}", file=sys.stderr)
    return error.code
