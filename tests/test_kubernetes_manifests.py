"""``examples/kubernetes/``: every manifest is valid against the Kubernetes API schemas
(``kubernetes-validate``, strict: unknown fields are errors), and the manifests agree with each
other and with asgimesh where no schema can see it: variable names that asgimesh reads (taken
from ``MeshSettings`` itself), values it accepts, Service selectors and ports that meet their
pods, probes on ``/_mesh/health``, discovery names that are headless Services, a policy that
``asgimesh policy check`` accepts, placeholders rather than secrets. A mutated copy of each kind
is refused, so the checks are known to bite."""

from __future__ import annotations

import copy
import functools
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from asgimesh import ConfigError, MeshSettings
from tests.conftest import ROOT, subprocess_env

kubernetes_validate = pytest.importorskip("kubernetes_validate")

HERE = ROOT / "examples" / "kubernetes"
SHOP = ROOT / "examples" / "shop"
#: A release kubernetes-validate ships schemas for, and the oldest the manifests suit: the
#: ``preStop`` ``sleep`` action (no ``sleep`` binary needed in the image) is on by default
#: from 1.30.
KUBERNETES = "1.32"
WORKLOADS = ("Deployment", "StatefulSet", "Job")


def load(directory: Path = HERE) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", {})
                doc["metadata"]["annotations"]["test/file"] = path.name
                docs.append(doc)
    return docs


def _strip(doc: dict[str, Any]) -> dict[str, Any]:
    """The document as written (without the file-name note this module adds)."""
    clean = copy.deepcopy(doc)
    clean["metadata"]["annotations"].pop("test/file", None)
    if not clean["metadata"]["annotations"]:
        del clean["metadata"]["annotations"]
    return clean


def schema_problems(docs: list[dict[str, Any]]) -> list[str]:
    problems = []
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata'].get('name')}"
        try:
            kubernetes_validate.validate(_strip(doc), KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            problems.append(f"{name}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{name}: {exc.message}")
    return problems


# ---- what asgimesh reads, from MeshSettings itself ------------------------------------------


def mesh_variables() -> dict[str, str]:
    """Environment variable name -> ``MeshSettings`` field, for every setting."""
    names: dict[str, str] = {}
    prefix = str(MeshSettings.model_config.get("env_prefix", ""))
    for field, info in MeshSettings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            for choice in alias.choices:
                if isinstance(choice, str) and choice != field:
                    names[choice.upper()] = field
        else:
            names[f"{prefix}{field}".upper()] = field
    return names


def _is_mesh_name(name: str, known: dict[str, str]) -> bool:
    return name.startswith("MESH_") or name in known


@functools.lru_cache(maxsize=16)
def policy_check(text: str) -> tuple[int, str]:
    """``asgimesh policy check`` on a policy document's text: (exit code, output)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mesh.yaml"
        path.write_text(text)
        done = subprocess.run(
            [sys.executable, "-m", "asgimesh", "policy", "check", str(path)],
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    return done.returncode, (done.stdout + done.stderr).replace(str(path), "mesh.yaml")


# ---- the consistency checks -----------------------------------------------------------------


def _pods(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            yield doc, doc["spec"]["template"]


def _container_ports(template: dict[str, Any]) -> set[object]:
    found: set[object] = set()
    for container in template["spec"]["containers"]:
        for port in container.get("ports", []):
            found.add(port["containerPort"])
            if "name" in port:
                found.add(port["name"])
    return found


def _literal_env(
    container: dict[str, Any], config_maps: dict[str, dict[str, str]]
) -> dict[str, str]:
    """The container's variables whose values the manifests spell out (not from Secrets)."""
    values: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            values.update(config_maps.get(source["configMapRef"]["name"], {}))
    for var in container.get("env", []):
        if "value" in var:
            values[var["name"]] = str(var["value"])
        elif "configMapKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["configMapKeyRef"]
            if ref["key"] in config_maps.get(ref["name"], {}):
                values[var["name"]] = config_maps[ref["name"]][ref["key"]]
    return values


def consistency_problems(docs: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    known = mesh_variables()
    config_maps = {
        d["metadata"]["name"]: {k: str(v) for k, v in (d.get("data") or {}).items()}
        for d in docs
        if d["kind"] == "ConfigMap"
    }
    secrets = {
        d["metadata"]["name"]: dict(d.get("stringData") or {}) | dict(d.get("data") or {})
        for d in docs
        if d["kind"] == "Secret"
    }
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    namespaces = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}

    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] != "Namespace" and doc["metadata"].get("namespace") not in namespaces:
            problems.append(f"{name}: namespace {doc['metadata'].get('namespace')!r} is not "
                            f"one of the manifests' namespaces {sorted(namespaces)}")

    # ConfigMaps loaded whole into a container's environment hold only names asgimesh knows.
    env_maps = {
        source["configMapRef"]["name"]
        for _, template in _pods(docs)
        for container in template["spec"]["containers"]
        for source in container.get("envFrom", [])
        if "configMapRef" in source
    }
    for map_name in sorted(env_maps):
        if map_name not in config_maps:
            problems.append(f"envFrom: ConfigMap {map_name!r} is not in the manifests")
        for key in config_maps.get(map_name, {}):
            if _is_mesh_name(key, known) and key not in known:
                problems.append(f"ConfigMap/{map_name}: {key} is not a variable asgimesh reads")

    mesh_services: dict[str, dict[str, str]] = {}
    for workload, template in _pods(docs):
        wname = f"{workload['kind']}/{workload['metadata']['name']}"
        labels = template["metadata"].get("labels", {})
        if workload["kind"] != "Job":
            wanted = workload["spec"]["selector"].get("matchLabels", {})
            if any(labels.get(k) != v for k, v in wanted.items()):
                problems.append(f"{wname}: selector {wanted} does not match its pods' {labels}")
        if workload["kind"] == "StatefulSet":
            governing = services.get(workload["spec"]["serviceName"])
            if governing is None or governing["spec"].get("clusterIP") != "None":
                problems.append(f"{wname}: serviceName {workload['spec']['serviceName']!r} "
                                "is not a headless Service")
        ports = _container_ports(template)
        grace = template["spec"].get("terminationGracePeriodSeconds", 30)
        for container in template["spec"]["containers"]:
            cname = f"{wname} container {container['name']}"
            for var in container.get("env", []):
                if _is_mesh_name(var["name"], known) and var["name"] not in known:
                    problems.append(f"{cname}: {var['name']} is not a variable asgimesh reads")
                ref = var.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    key = ref["secretKeyRef"]
                    if key["key"] not in secrets.get(key["name"], {}):
                        problems.append(f"{cname}: {var['name']} names Secret key "
                                        f"{key['name']}/{key['key']}, which is not there")
                if "configMapKeyRef" in ref:
                    key = ref["configMapKeyRef"]
                    if key["key"] not in config_maps.get(key["name"], {}):
                        problems.append(f"{cname}: {var['name']} names ConfigMap key "
                                        f"{key['name']}/{key['key']}, which is not there")
            values = _literal_env(container, config_maps)
            mesh = {known[k]: v for k, v in values.items() if k in known}
            if mesh:
                try:
                    MeshSettings.from_env(**mesh)
                except ConfigError as exc:
                    problems.append(f"{cname}: {exc}")
            if "MESH_SERVICE" in values:
                mesh_services[values["MESH_SERVICE"]] = values
                for probe in ("readinessProbe", "livenessProbe"):
                    path = container.get(probe, {}).get("httpGet", {}).get("path")
                    if path != "/_mesh/health":
                        problems.append(f"{cname}: {probe} is {path!r}, expected /_mesh/health")
                problems.extend(_command_problems(cname, container))
            for probe in ("readinessProbe", "livenessProbe"):
                port = container.get(probe, {}).get("httpGet", {}).get("port")
                if port is not None and port not in ports:
                    problems.append(f"{cname}: {probe} port {port!r} is not a container port")
            if not container.get("resources", {}).get("requests"):
                problems.append(f"{cname}: no resource requests")
            sleep = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {})
            if sleep and sleep["seconds"] >= grace:
                problems.append(f"{cname}: preStop sleeps {sleep['seconds']} s, not less than "
                                f"terminationGracePeriodSeconds {grace}")
        for volume in template["spec"].get("volumes", []):
            if "configMap" in volume and volume["configMap"]["name"] not in config_maps:
                problems.append(f"{wname}: volume ConfigMap {volume['configMap']['name']!r} "
                                "is not in the manifests")

    for sname, service in services.items():
        selector = service["spec"].get("selector", {})
        matched = [
            template
            for workload, template in _pods(docs)
            if workload["kind"] != "Job"
            and workload["metadata"].get("namespace") == service["metadata"].get("namespace")
            and all(template["metadata"].get("labels", {}).get(k) == v
                    for k, v in selector.items())
        ]
        if not matched:
            problems.append(f"Service/{sname}: selector {selector} matches no pods")
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for template in matched:
                if target not in _container_ports(template):
                    problems.append(f"Service/{sname}: targetPort {target!r} is not a port of "
                                    "the pods it selects")

    for secret, values in secrets.items():
        for key, value in values.items():
            if not str(value).startswith("REPLACE-ME"):
                problems.append(f"Secret/{secret}: {key} holds a value, not a REPLACE-ME "
                                "placeholder: real secrets never go into the repository")

    problems.extend(_policy_problems(config_maps, services, mesh_services))
    return problems


def _command_problems(cname: str, container: dict[str, Any]) -> list[str]:
    """``uvicorn``/``gunicorn`` ``module:app`` names a module of the shop the image copies."""
    command = [*container.get("command", []), *container.get("args", [])]
    targets = [part for part in command if re.fullmatch(r"[\w.]+:\w+", part)]
    if not targets:
        return [f"{cname}: no module:app in its command {command}"]
    module = targets[0].split(":")[0].replace(".", "/")
    if not (SHOP / f"{module}.py").exists():
        return [f"{cname}: {targets[0]} is not a module of examples/shop"]
    return []


def _policy_problems(
    config_maps: dict[str, dict[str, str]],
    services: dict[str, dict[str, Any]],
    mesh_services: dict[str, dict[str, str]],
) -> list[str]:
    problems = []
    text = config_maps.get("shop-policy", {}).get("mesh.yaml")
    if text is None:
        return ["ConfigMap/shop-policy: no mesh.yaml"]
    code, output = policy_check(text)
    if code != 0:
        problems.append(f"ConfigMap/shop-policy: asgimesh policy check: {output.strip()}")
        return problems
    policy = yaml.safe_load(text)
    for upstream, spec in (policy.get("services") or {}).items():
        if "dns" not in spec:
            continue
        host, _, port = spec["dns"].rpartition(":")
        parts = host.split(".")
        service = services.get(parts[0])
        where = f"ConfigMap/shop-policy: services.{upstream}.dns {spec['dns']!r}"
        if service is None or host != f"{parts[0]}.{service['metadata']['namespace']}.svc.cluster.local":
            problems.append(f"{where}: not <service>.<namespace>.svc.cluster.local of a Service")
            continue
        if service["spec"].get("clusterIP") != "None":
            problems.append(f"{where}: Service {parts[0]} is not headless (one address only)")
        if int(port) not in {p["port"] for p in service["spec"]["ports"]}:
            problems.append(f"{where}: port {port} is not a port of Service {parts[0]}")
        if upstream not in mesh_services:
            problems.append(f"{where}: no Deployment runs MESH_SERVICE={upstream}")
    for receiver, inbound in (policy.get("inbound") or {}).items():
        for rule in inbound.get("authorization") or []:
            for caller in (rule.get("allow") or rule.get("deny") or {}).get("from") or []:
                match = re.fullmatch(r"spiffe://([^/]+)/ns/([^/]+)/sa/([^/]+)", caller)
                ok = match is not None and any(
                    values.get("MESH_TRUST_DOMAIN", "mesh.local") == match.group(1)
                    and values.get("MESH_NAMESPACE", "default") == match.group(2)
                    and name == match.group(3)
                    for name, values in mesh_services.items()
                )
                if not ok:
                    problems.append(f"ConfigMap/shop-policy: inbound.{receiver} admits {caller}, "
                                    "the identity of no Deployment here")
    for name, values in mesh_services.items():
        source = values.get("MESH_CONFIG", "")
        match = re.fullmatch(r"https?://([\w-]+)\.[\w.-]+:(\d+)", source)
        if match is None or match.group(1) not in services or int(match.group(2)) not in {
            p["port"] for p in services[match.group(1)]["spec"]["ports"]
        }:
            problems.append(f"{name}: MESH_CONFIG {source!r} is not a Service of the manifests")
    return problems


# ---- the tests ------------------------------------------------------------------------------


DOCS = load()


def test_the_manifests_hold_the_whole_shop() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in DOCS}
    for name in ("frontend", "orders", "payments", "controlplane"):
        assert ("Deployment", name) in kinds and ("Service", name) in kinds
    assert {("StatefulSet", "etcd"), ("Job", "apply-policy"), ("Namespace", "shop")} <= kinds
    etcd = next(d for d in DOCS if d["kind"] == "StatefulSet")
    assert etcd["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]


@pytest.mark.parametrize(
    "doc", DOCS, ids=lambda d: f"{d['metadata']['annotations']['test/file']}:{d['kind']}"
)
def test_each_manifest_is_valid_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    assert schema_problems([doc]) == []


def test_the_schema_check_refuses_a_broken_manifest() -> None:
    broken = copy.deepcopy(next(d for d in DOCS if d["kind"] == "Deployment"))
    broken["spec"]["replicas"] = "two"
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    problems = schema_problems([broken])
    assert len(problems) == 1
    assert "replicas" in problems[0] or "httpGett" in problems[0]


def test_the_variable_names_come_from_mesh_settings() -> None:
    known = mesh_variables()
    assert {"MESH_SERVICE", "MESH_CONFIG", "MESH_TOKEN", "SPIFFE_CREDENTIAL_FOLDER"} <= set(known)
    assert len(known) == len(MeshSettings.model_fields)


def test_the_manifests_agree_with_each_other_and_with_asgimesh() -> None:
    assert consistency_problems(DOCS) == []


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def _container(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    container: dict[str, Any] = _find(docs, "Deployment", name)["spec"]["template"]["spec"][
        "containers"
    ][0]
    return container


def _set_policy(docs: list[dict[str, Any]], old: str, new: str) -> None:
    policy = _find(docs, "ConfigMap", "shop-policy")["data"]
    assert old in policy["mesh.yaml"]
    policy["mesh.yaml"] = policy["mesh.yaml"].replace(old, new)


Mutation = Callable[[list[dict[str, Any]]], None]
MUTATIONS: dict[str, tuple[Mutation, str]] = {
    "wrong selector": (
        lambda d: _find(d, "Service", "orders")["spec"]["selector"].update(
            {"app.kubernetes.io/name": "order"}
        ),
        "Service/orders: selector {'app.kubernetes.io/name': 'order'} matches no pods",
    ),
    "wrong target port": (
        lambda d: _find(d, "Service", "payments")["spec"]["ports"][0].update(targetPort=8080),
        "Service/payments: targetPort 8080 is not a port",
    ),
    "unknown MESH_ variable": (
        lambda d: _find(d, "ConfigMap", "mesh-env")["data"].update(MESH_TIMEOUTS="2s"),
        "ConfigMap/mesh-env: MESH_TIMEOUTS is not a variable asgimesh reads",
    ),
    "bad MESH_ value": (
        lambda d: _find(d, "ConfigMap", "mesh-env")["data"].update(MESH_MTLS="on"),
        "MESH_MTLS='on': expected one of",
    ),
    "bad MESH_SERVICE in a Deployment": (
        lambda d: _container(d, "orders")["env"][0].update(value="orders!"),
        "MESH_SERVICE='orders!'",
    ),
    "missing secret key": (
        lambda d: _container(d, "payments")["env"][2]["valueFrom"]["secretKeyRef"].update(
            key="payment"
        ),
        "names Secret key shop-service-tokens/payment, which is not there",
    ),
    "a real-looking secret": (
        lambda d: _find(d, "Secret", "mesh-admin-token")["stringData"].update(token="hunter2"),
        "Secret/mesh-admin-token: token holds a value",
    ),
    "probe off the mesh's health path": (
        lambda d: _container(d, "frontend")["readinessProbe"]["httpGet"].update(path="/health"),
        "readinessProbe is '/health', expected /_mesh/health",
    ),
    "invalid policy": (
        lambda d: _set_policy(d, "timeout: 2s", "timeout: fast"),
        "defaults.timeout: expected a duration",
    ),
    "dns naming no headless Service": (
        lambda d: _set_policy(d, "dns: orders.shop.", "dns: order.shop."),
        "services.orders.dns 'order.shop.svc.cluster.local:8000': not",
    ),
    "authorization for an identity nobody has": (
        lambda d: _set_policy(d, "ns/shop/sa/orders", "ns/default/sa/orders"),
        "admits spiffe://mesh.local/ns/default/sa/orders, the identity of no Deployment",
    ),
    "command naming a module the image lacks": (
        lambda d: _container(d, "orders").update(
            command=["gunicorn", "order:app", "--bind", "0.0.0.0:8000"]
        ),
        "order:app is not a module of examples/shop",
    ),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_mutated_copy_is_refused(mutation: str) -> None:
    docs = copy.deepcopy(DOCS)
    mutate, expected = MUTATIONS[mutation]
    mutate(docs)
    problems = consistency_problems(docs)
    assert any(expected in problem for problem in problems), problems


def test_the_dockerfile_copies_what_the_repository_has() -> None:
    dockerfile = (HERE / "Dockerfile").read_text()
    sources = [
        part
        for line in dockerfile.splitlines()
        if line.startswith("COPY ") and "--from" not in line
        for part in line.split()[1:-1]
    ]
    assert sources, dockerfile
    for source in sources:
        assert (ROOT / source).exists(), source
    ignore = (HERE / "Dockerfile.dockerignore").read_text().split()
    for source in sources:
        assert f"!{source.rstrip('/')}" in {i.rstrip("/") for i in ignore}, source
    # Every image the manifests run is the one this Dockerfile builds (or etcd's own).
    images = {
        container["image"]
        for _, template in _pods(DOCS)
        for container in template["spec"]["containers"]
    }
    assert images == {"asgimesh-shop:0.1.0", "quay.io/coreos/etcd:v3.5.17"}
    assert "-t asgimesh-shop:0.1.0" in dockerfile
