"""Reading policy documents: text to a dict, dicts to a validated :class:`Policy`, layers merged.

Pure functions, no I/O beyond :func:`read_policy_file`: the control-plane server, the CLI's
``policy check``, the file watcher and the runtime all refuse a document with the same words.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .._errors import PolicyError
from ._model import Policy

__all__ = [
    "FORMATS",
    "MAX_DOCUMENT_BYTES",
    "Layer",
    "format_validation_error",
    "merge_layers",
    "parse_document",
    "parse_policy",
    "read_policy_file",
    "validate_document",
]

FORMATS = ("json", "yaml", "toml")
#: The largest policy document read from any source (the server, a file, ``MESH_POLICY``). Real
#: ones are a few kilobytes; the bound is what keeps a document's parse short.
MAX_DOCUMENT_BYTES = 1 << 20

#: A named layer: where a partial document came from, and the document.
Layer = tuple[str, Mapping[str, Any]]


def format_for(name: str, content_type: str | None = None) -> str:
    """Guess a document's format from a file name or an HTTP content type (JSON by default)."""
    lowered = (content_type or "").lower()
    if "yaml" in lowered or name.lower().endswith((".yaml", ".yml")):
        return "yaml"
    if "toml" in lowered or name.lower().endswith(".toml"):
        return "toml"
    return "json"


def parse_document(text: str | bytes, fmt: str, source: str = "policy") -> dict[str, Any]:
    """Parse ``text`` as ``fmt``; a syntax error is a :class:`PolicyError` naming where.

    So is what the parsers raise beyond syntax errors: nesting deeper than the stack
    (``RecursionError``), an integer past the interpreter's digit limit (``ValueError``), a
    document larger than :data:`MAX_DOCUMENT_BYTES`.
    """
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_DOCUMENT_BYTES:
        raise PolicyError(
            [f"(document): expected at most {MAX_DOCUMENT_BYTES} bytes, got {size}"], source
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyError(["(document): expected UTF-8 text"], source) from None
    try:
        if fmt == "yaml":
            from ._yaml import load_yaml  # PyYAML only for YAML documents (cold start)

            data = load_yaml(text, source)
        elif fmt == "toml":
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyError(
            [f"(document): invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"], source
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError([_one_line(f"(document): invalid TOML: {exc}")], source) from None
    except RecursionError:
        raise PolicyError(["(document): nested too deeply"], source) from None
    except ValueError as exc:  # e.g. an integer longer than the interpreter converts
        raise PolicyError([f"(document): {str(exc)[:120]}"], source) from None
    if data is None and fmt == "yaml":
        data = {}  # an empty YAML file (or one of comments only) is an empty policy
    _refuse_surrogates(data, source)
    if not isinstance(data, dict):
        # JSON's ``null`` included: a script that PUTs the output of a failed ``jq`` must not
        # replace the whole policy (its authorization rules among it) with an empty one.
        kind = "null" if data is None else type(data).__name__
        raise PolicyError([f"(document): expected a mapping at the top, got {kind}"], source)
    return data


def _refuse_surrogates(data: Any, source: str) -> None:
    """JSON's ``"\\ud800"`` (and YAML's) decode to a lone surrogate, which no UTF-8 text can
    hold: the document could be neither signed nor served, so it is refused here, by name."""
    try:
        json.dumps(data, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:
        raise PolicyError(
            ["(document): expected Unicode text, got a lone surrogate (such as \\ud800)"], source
        ) from None
    except (ValueError, RecursionError):
        pass  # not JSON-shaped (NaN and the like): validation names those by path


def read_policy_file(path: str | Path) -> dict[str, Any]:
    """Read and parse a policy file; an unreadable file is a :class:`PolicyError` too."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_DOCUMENT_BYTES + 1)  # a larger file is refused, not read whole
    except OSError as exc:
        raise PolicyError(
            [f"(file): cannot read {str(path)!r}: {exc.strerror or exc}"], str(path)
        ) from None
    return parse_document(raw, format_for(path.name), str(path))


def _show(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


#: The longest refusal line: a key or value of a megabyte must not make a megabyte log line.
MAX_PROBLEM = 500


def _key(part: str) -> str:
    """A path segment as written, unless it could mislead a reader of the log: a key with a
    line break, a control character or a space, or a very long one, is shown quoted (escaped
    and shortened) rather than raw."""
    if part and len(part) <= 64 and part.isprintable() and " " not in part:
        return part
    return _show(part)


def _one_line(text: str) -> str:
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= MAX_PROBLEM else text[: MAX_PROBLEM - 3] + "..."


def format_validation_error(exc: ValidationError) -> list[str]:
    """One ``path: problem`` line per error, the path dotted as the document spells it.

    Each line is one line and bounded (:data:`MAX_PROBLEM`), whatever keys and values the
    document holds: refusals end up in logs and in the control plane's answers."""
    problems = []
    for error in exc.errors(include_url=False):
        loc = [
            str(part) for part in error["loc"] if not str(part).startswith(("function-", "lax-"))
        ]
        # Drop pydantic's union-branch labels (``int``, ``literal[...]``) from the path.
        loc = [
            part
            for part in loc
            if not part.startswith(("literal[", "constrained-")) and part not in ("int", "str")
        ]
        path = ".".join(_key(part) for part in loc) or "(document)"
        kind = error["type"]
        value = error.get("input")
        message = str(error["msg"]).removeprefix("Value error, ")
        if kind == "extra_forbidden":
            message = "unknown field"
        elif kind == "missing":
            message = "required"
        elif kind == "literal_error":
            message = (
                f"expected one of {error.get('ctx', {}).get('expected', '')}, got {_show(value)}"
            )
        elif not message.startswith("expected"):
            message = f"expected {message[0].lower()}{message[1:]}".replace(
                "expected input should be ", "expected "
            )
            message += f", got {_show(value)}"
        problems.append(_one_line(f"{path}: {message}"))
    # Unions report each branch; keep each line once, in order.
    return list(dict.fromkeys(problems))


def validate_document(document: Mapping[str, Any], source: str = "policy") -> Policy:
    """Validate one (possibly partial) document; every problem listed, or a :class:`Policy`."""
    try:
        return Policy.model_validate(document)
    except ValidationError as exc:
        raise PolicyError(format_validation_error(exc), source) from None


def parse_policy(text: str | bytes, fmt: str = "json", source: str = "policy") -> Policy:
    """Text to :class:`Policy` in one call, as ``policy check`` and the control plane need."""
    return validate_document(parse_document(text, fmt, source), source)


def merge_layers(layers: Iterable[Layer]) -> tuple[dict[str, Any], dict[str, str]]:
    """Deep-merge ``layers``, lowest first. Mappings merge key by key; anything else (lists
    included) is replaced whole. Returns the merged document and, for each leaf path the layers
    set, the name of the layer its value came from."""
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}

    def merge(into: dict[str, Any], update: Mapping[str, Any], prefix: str, name: str) -> None:
        for key, value in update.items():
            path = f"{prefix}{key}"
            if isinstance(value, Mapping) and isinstance(into.get(key), dict):
                merge(into[key], value, path + ".", name)
            elif isinstance(value, Mapping):
                into[key] = {}
                for stale in [p for p in origin if p.startswith(path + ".")]:
                    del origin[stale]
                merge(into[key], value, path + ".", name)
                if not value:
                    origin[path] = name
            else:
                into[key] = value
                for stale in [p for p in origin if p.startswith(path + ".")]:
                    del origin[stale]
                origin[path] = name

    for name, document in layers:
        merge(merged, document, "", name)
    return merged, origin
