"""The dashboard at ``GET /``: one self-contained page (no external assets, no build step) that
reads ``/v1/services`` every two seconds, and ``/v1/policy`` whenever the version changes, and
renders them without reloading: a service graph drawn as SVG by the page's own script (a few
dozen lines of layout, so no graph library to vendor), the services and their instances, the
calls between them with ejected endpoints and why, and, for an admin who types the token in,
the policy history with a diff between any two versions and rollback.

The page's HTML, style and script live in ``_static/`` and are put together once, at import.

Everything shown comes from instance reports, i.e. from whoever holds a service token (or, with
etcd, write access to etcd): the script puts data into the page only through ``textContent`` and
``createElement``, never ``innerHTML``. As a second line, the page is served with a
Content-Security-Policy that lets only this page's own script and style run (by their SHA-256
hashes): a name that slipped through as markup still could not execute.
"""

from __future__ import annotations

import base64
import hashlib
from importlib.resources import files

__all__ = ["DASHBOARD_HEADERS", "DASHBOARD_HTML"]

_STATIC = files(__package__) / "_static"
_STYLE = (_STATIC / "dashboard.css").read_text(encoding="utf-8")
_SCRIPT = (_STATIC / "dashboard.js").read_text(encoding="utf-8")

DASHBOARD_HTML = (
    (_STATIC / "dashboard.html")
    .read_text(encoding="utf-8")
    .replace("/*STYLE*/", _STYLE, 1)
    .replace("/*SCRIPT*/", _SCRIPT, 1)
)


def _sha256(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


#: Only this page's own script and style may run; it may talk only to its own origin.
DASHBOARD_HEADERS = {
    "content-security-policy": (
        f"default-src 'none'; script-src {_sha256(_SCRIPT)}; style-src {_sha256(_STYLE)}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}
