"""``MeshSettings``: the ``MESH_*`` environment of the contract, section 3.

Settings are read once per runtime. A bad value stops start-up with :class:`ConfigError`, one line
naming the variable, the value and what was expected; secrets are ``SecretStr`` so that neither a
``repr`` nor a config dump shows them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from ._durations import parse_duration
from ._errors import ConfigError
from ._log import redact
from ._wire import ZONE_NAME_EXPECTED, is_service_name, is_zone_name

__all__ = ["MeshSettings", "parse_upstreams"]

Duration = Annotated[float, BeforeValidator(parse_duration)]

_POLICY_SUFFIXES = (".yaml", ".yml", ".json", ".toml")
#: ``MESH_POLICY_MAX_AGE`` unless set: a week, so that services restarting during a control
#: plane outage of a long weekend (reading etcd directly) still take its last envelope.
DEFAULT_POLICY_MAX_AGE = 7 * 24 * 3600.0


def _check_name(value: str) -> str:
    if not is_service_name(value):
        raise ValueError(
            "expected a name of letters, digits, '.', '_' or '-' that starts and ends with a "
            f"letter or digit, got {value!r}"
        )
    return value


def parse_upstreams(text: str) -> dict[str, tuple[str, ...]]:
    """Parse static discovery, ``payments=http://a:1,http://b:2;orders=http://c:3``."""
    result: dict[str, tuple[str, ...]] = {}
    for entry in filter(None, (part.strip() for part in text.split(";"))):
        name, sep, urls = entry.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(
                f"expected service=url[,url...] entries separated by ';', got {entry!r}"
            )
        _check_name(name)
        endpoints = tuple(u.strip().rstrip("/") for u in urls.split(",") if u.strip())
        if not endpoints:
            raise ValueError(f"expected at least one endpoint URL for {name!r}")
        for url in endpoints:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(
                    f"expected an http:// or https:// endpoint for {name!r}, got {url!r}"
                )
        result[name] = endpoints
    return result


class MeshSettings(BaseSettings):
    """This process's mesh settings. Build with :meth:`from_env` to get operator-grade errors."""

    model_config = SettingsConfigDict(
        env_prefix="MESH_",
        case_sensitive=False,
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    service: str = "app"
    namespace: str = "default"
    trust_domain: str = "mesh.local"
    config: str | None = None
    policy: str | None = None
    upstreams: str | None = None
    timeout: Duration = 10.0
    retries: int = Field(default=2, ge=0, le=100)
    token: SecretStr | None = None
    admin_token: SecretStr | None = None
    mtls: Literal["off", "permissive", "strict"] = "off"
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    #: SPIFFE's filesystem delivery (the layout Kubernetes pod certificates write): a variable
    #: of the SPIFFE ecosystem, not of the mesh, so it has no ``MESH_`` prefix.
    credential_folder: Path | None = Field(
        default=None, validation_alias=AliasChoices("SPIFFE_CREDENTIAL_FOLDER", "credential_folder")
    )
    access_log: bool = False
    log_format: Literal["json", "console"] = "json"
    #: Oldest signing time a control-plane policy envelope may have, in seconds; ``0``: no
    #: limit (and envelopes of earlier control planes, which carry none, are accepted). The
    #: control plane re-signs hourly, so this only needs to outlast a control-plane outage.
    policy_max_age: Duration = DEFAULT_POLICY_MAX_AGE
    #: This instance's name in reports, ``asgimesh status`` and the dashboard (the process id
    #: is added); unset: host name, process id and a few random hex digits.
    instance: str | None = None
    #: The zone (failure domain) this instance runs in, for ``zone_affinity``: calls prefer
    #: endpoints the policy places in the same zone. Unset: no preference.
    zone: str | None = None

    @field_validator("service", "namespace", "trust_domain")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _check_name(value)

    @field_validator("instance")
    @classmethod
    def _valid_instance(cls, value: str | None) -> str | None:
        return _check_name(value) if value else None

    @field_validator("zone")
    @classmethod
    def _valid_zone(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not is_zone_name(value):
            raise ValueError(f"expected {ZONE_NAME_EXPECTED}, got {value[:100]!r}")
        return value

    @field_validator("config")
    @classmethod
    def _valid_source(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        scheme = urlsplit(value).scheme
        if scheme in ("http", "https", "etcd", "etcds"):
            if not urlsplit(value).hostname:
                raise ValueError(f"expected a host in the URL, got {redact(value)!r}")
            return value
        if value.lower().endswith(_POLICY_SUFFIXES):
            return value
        raise ValueError(
            "expected a policy file (.yaml, .yml, .json, .toml), an http(s):// control plane "
            f"URL or etcd(s)://host:port[/prefix], got {redact(value)!r}"
        )

    @field_validator("upstreams")
    @classmethod
    def _valid_upstreams(cls, value: str | None) -> str | None:
        if value:
            parse_upstreams(value)
        return value or None

    @field_validator("policy")
    @classmethod
    def _blank_policy(cls, value: str | None) -> str | None:
        return value if value and value.strip() else None

    @property
    def spiffe_id(self) -> str:
        """This service's identity, ``spiffe://<trust domain>/ns/<namespace>/sa/<service>``."""
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service}"

    @property
    def upstream_map(self) -> dict[str, tuple[str, ...]]:
        return parse_upstreams(self.upstreams) if self.upstreams else {}

    @classmethod
    def from_env(cls, **overrides: Any) -> MeshSettings:
        """Read ``MESH_*``; on a bad value raise :class:`ConfigError` with one line per problem."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None


_VARIABLES = {
    "credential_folder": "SPIFFE_CREDENTIAL_FOLDER",
    "spiffe_credential_folder": "SPIFFE_CREDENTIAL_FOLDER",
}


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else "?"
        variable = _VARIABLES.get(field.lower(), f"MESH_{field.upper()}")
        value = error.get("input")
        if field in ("token", "admin_token"):
            shown = "<redacted>"
        elif isinstance(value, str):
            shown = repr(redact(value))  # a URL's user:password@
        else:
            shown = repr(str(value))
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "literal_error":
            expected = error.get("ctx", {}).get("expected", "")
            message = f"expected one of {expected}"
        elif error["type"].startswith(("int_", "bool_", "greater", "less")):
            message = f"expected {message[0].lower()}{message[1:]}".replace(
                "expected input should be", "expected"
            )
        lines.append(f"{variable}={shown}: {message}")
    return "invalid mesh settings: " + "; ".join(lines)
