"""The deployment files (deploy/): the Dockerfile and the Kustomize overlays, checked offline.

There is no kubectl, kustomize or Docker engine here, so:

- Each overlay is rendered by ``render`` below, a small subset of Kustomize: ``resources``
  (files and directories), ``patches`` given as strategic-merge patch files (maps merge,
  ``null`` deletes a key, and the one list they may touch is a Deployment's ``containers``,
  merged by name), ``namespace``, ``labels`` without selectors or templates, and ``images``
  with ``newTag``. It applies them in Kustomize's order (patches, namespace, labels, images)
  and refuses any other field, so within that subset its output is what ``kustomize build``
  produces (up to the order of the objects). Keep the overlays inside it, or extend it.
- Objects of the built-in API groups (core, apps, policy, networking.k8s.io) are validated
  against the Kubernetes OpenAPI schemas bundled by kubernetes-validate, strict (unknown
  fields are errors). The custom resources (Prometheus Operator, KEDA, RabbitMQ Cluster and
  Messaging Topology Operators) have no schema there: ``CUSTOM_RESOURCES`` checks their
  apiVersion and kind, required spec fields, known spec fields and a few enums instead.
- The manifests are cross-checked against the code: settings names and defaults, the
  example consumer's queue and bindings, the broker topology the SDK declares.
- The Dockerfile is parsed (instructions, stages) and its HEALTHCHECK command is run against
  a local HTTP server.
"""

from __future__ import annotations

import copy
import functools
import http.server
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from bridge.cli import cli
from bridge.config import BridgeSettings, BrokerSettings, ConsumerSettings, load
from bridge.errors import ConfigError
from bridge.example.consumer import build

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"
OVERLAYS = ("dev", "production")
NAMESPACES = {"dev": "dicom-bridge-dev", "production": "dicom-bridge"}
K8S_VERSION = "1.30"  # oldest Kubernetes the manifests target (preStop sleep action: 1.30)
APP_IMAGE = "ghcr.io/dicom-bridge/dicom-bridge"
AMQP_SECRET = "dicom-bridge-amqp"
# The dev overlay's placeholder Secret is also the documented shape of production's Secret,
# which is created out of band.
SECRET_FILE = KUSTOMIZE / "overlays" / "dev" / "secret.yaml"

Obj = dict[str, Any]


# --- a Kustomize subset ----------------------------------------------------------------------

KUSTOMIZATION_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "labels",
    "images",
    "patches",
}
# Strategic merge keys of the lists a patch may touch, per kind (as in the Kubernetes API).
MERGE_KEYS = {("Deployment", "containers"): "name"}


def _documents(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _merge(target: Obj, patch: Obj, kind: str, where: str) -> None:
    """Strategic merge of ``patch`` into ``target`` for the subset described above."""
    for key, value in patch.items():
        here = f"{where}.{key}"
        assert not key.startswith("$"), f"{here}: patch directives are not supported"
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value, kind, here)
        elif isinstance(value, list):
            merge_key = MERGE_KEYS.get((kind, key))
            assert merge_key, f"{here}: only {sorted(MERGE_KEYS)} lists may be patched"
            items = {item[merge_key]: item for item in target[key]}
            for item in value:
                assert item[merge_key] in items, f"{here}: patch adds {item[merge_key]!r}"
                _merge(items[item[merge_key]], item, kind, f"{here}[{item[merge_key]}]")
        else:
            target[key] = copy.deepcopy(value)


def _split_image(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag or "@" in image:
        return image, ""
    return name, tag


def render(directory: Path) -> list[Obj]:
    """``kustomize build directory`` for the subset this deployment uses."""
    (kustomization,) = _documents(directory / "kustomization.yaml")
    unsupported = set(kustomization) - KUSTOMIZATION_FIELDS
    assert not unsupported, f"{directory}: the test renderer lacks {sorted(unsupported)}"
    objects: list[Obj] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        objects += render(path) if path.is_dir() else _documents(path)
    for entry in kustomization.get("patches", []):
        assert set(entry) == {"path"}, f"{directory}: only patches given by path: {entry}"
        (patch,) = _documents(directory / entry["path"])
        targets = [
            o
            for o in objects
            if (o["apiVersion"], o["kind"], o["metadata"]["name"])
            == (patch["apiVersion"], patch["kind"], patch["metadata"]["name"])
        ]
        assert len(targets) == 1, f"{directory}/{entry['path']}: no single target"
        _merge(targets[0], patch, patch["kind"], patch["kind"])
    if namespace := kustomization.get("namespace"):
        for obj in objects:
            # Kustomize renames a Namespace object to the namespace: ours must have that name.
            if obj["kind"] == "Namespace":
                assert obj["metadata"]["name"] == namespace
            else:
                obj["metadata"]["namespace"] = namespace
    for label in kustomization.get("labels", []):
        assert set(label) <= {"pairs", "includeSelectors", "includeTemplates"}
        assert not label.get("includeSelectors")
        assert not label.get("includeTemplates")
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
    for image in kustomization.get("images", []):
        assert set(image) == {"name", "newTag"}, f"{directory}: images: name and newTag only"
        for obj in objects:
            for c in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                if _split_image(c["image"])[0] == image["name"]:
                    c["image"] = f"{image['name']}:{image['newTag']}"
    return objects


@functools.cache
def _rendered(overlay: str) -> list[Obj]:
    return render(KUSTOMIZE / "overlays" / overlay)


def rendered(overlay: str) -> list[Obj]:
    """A fresh copy of the rendered overlay (tests may modify it)."""
    return copy.deepcopy(_rendered(overlay))


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def objects(overlay: str) -> list[Obj]:
    return rendered(overlay)


def test_renderer_merges_like_a_strategic_merge_patch() -> None:
    target: Obj = {
        "spec": {
            "replicas": 2,
            "paused": False,
            "template": {"spec": {"containers": [{"name": "a", "image": "x", "args": ["1"]}]}},
        }
    }
    patch: Obj = {
        "spec": {
            "replicas": 3,
            "paused": None,
            "template": {"spec": {"containers": [{"name": "a", "resources": {"cpu": "1"}}]}},
        }
    }
    _merge(target, patch, "Deployment", "Deployment")
    assert target == {
        "spec": {
            "replicas": 3,
            "template": {
                "spec": {
                    "containers": [
                        {"name": "a", "image": "x", "args": ["1"], "resources": {"cpu": "1"}}
                    ]
                }
            },
        }
    }
    with pytest.raises(AssertionError, match="lists may be patched"):
        _merge({"spec": {"ports": []}}, {"spec": {"ports": [{"port": 1}]}}, "Service", "Service")
    assert _split_image("ghcr.io/a/b:1.0") == ("ghcr.io/a/b", "1.0")
    assert _split_image("registry:5000/a/b") == ("registry:5000/a/b", "")


# --- helpers ----------------------------------------------------------------------------------


def find(objects: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container_of(deployment: Obj) -> Obj:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    result: Obj = container
    return result


def settings_class(container: Obj) -> type[BrokerSettings]:
    command = container["args"][0]
    kinds: dict[str, type[BrokerSettings]] = {
        "serve": BridgeSettings,
        "example-consumer": ConsumerSettings,
    }
    assert command in kinds, f"container {container['name']} runs {command!r}"
    return kinds[command]


def default(kind: type[BrokerSettings], name: str) -> Any:
    assert name in kind.model_fields, f"{kind.__name__} has no field {name}"
    return kind.model_fields[name].get_default(call_default_factory=True)


def secret_shape() -> dict[str, str]:
    (secret,) = _documents(SECRET_FILE)
    data: dict[str, str] = secret["stringData"]
    return data


def environment(objects: list[Obj], container: Obj) -> dict[str, str]:
    """The container's variables, ConfigMap and Secret references resolved."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, source
        env.update(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif ref := var["valueFrom"].get("secretKeyRef"):
            assert ref["name"] == AMQP_SECRET
            env[var["name"]] = secret_shape()[ref["key"]]
        else:
            ref = var["valueFrom"]["configMapKeyRef"]
            env[var["name"]] = one(objects, "ConfigMap", ref["name"])["data"][ref["key"]]
    return env


def deployments(objects: list[Obj]) -> list[tuple[Obj, Obj, type[BrokerSettings]]]:
    found = []
    for deployment in find(objects, "Deployment"):
        container = container_of(deployment)
        found.append((deployment, container, settings_class(container)))
    return found


def bridge(objects: list[Obj]) -> tuple[Obj, Obj]:
    deployment = one(objects, "Deployment", "dicom-bridge")
    return deployment, container_of(deployment)


def consumer(objects: list[Obj]) -> tuple[Obj, Obj]:
    deployment = one(objects, "Deployment", "example-consumer")
    return deployment, container_of(deployment)


def port_number(container: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    result: int = number
    return result


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def pod_labels(deployment: Obj) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def quantity(value: str | int) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    text = str(value)
    for unit, factor in units.items():
        if text.endswith(unit):
            return float(text.removesuffix(unit)) * factor
    return float(text)


# --- rendering and schemas --------------------------------------------------------------------

BUILTIN_GROUPS = {"v1", "apps/v1", "policy/v1", "networking.k8s.io/v1"}


@dataclass(frozen=True)
class CustomResource:
    required: frozenset[str]
    known: frozenset[str]  # a subset of the CRD's spec fields: extend it when you use another
    enums: dict[str, frozenset[str]] = field(default_factory=dict)


def _cr(required: str, known: str, **enums: str) -> CustomResource:
    return CustomResource(
        frozenset(required.split()),
        frozenset(required.split()) | frozenset(known.split()),
        {k: frozenset(v.split()) for k, v in enums.items()},
    )


TOPOLOGY = "rabbitmq.com/v1beta1"
CUSTOM_RESOURCES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _cr(
        "selector endpoints", "jobLabel targetLabels podTargetLabels namespaceSelector sampleLimit"
    ),
    ("keda.sh/v1alpha1", "ScaledObject"): _cr(
        "scaleTargetRef triggers",
        "pollingInterval cooldownPeriod initialCooldownPeriod idleReplicaCount "
        "minReplicaCount maxReplicaCount advanced fallback",
    ),
    ("keda.sh/v1alpha1", "TriggerAuthentication"): _cr(
        "", "secretTargetRef env configMapTargetRef podIdentity hashiCorpVault"
    ),
    (TOPOLOGY, "RabbitmqCluster"): _cr(
        "",
        "replicas image imagePullSecrets service persistence resources affinity tolerations "
        "rabbitmq tls override terminationGracePeriodSeconds skipPostDeploySteps "
        "delayStartSeconds secretBackend autoEnableAllFeatureFlags",
    ),
    (TOPOLOGY, "Exchange"): _cr(
        "name rabbitmqClusterReference",
        "vhost type durable autoDelete arguments",
        type="direct fanout headers topic",
    ),
    (TOPOLOGY, "Queue"): _cr(
        "name rabbitmqClusterReference",
        "vhost type durable autoDelete deleteIfEmpty deleteIfUnused arguments",
        type="quorum classic stream",
    ),
    (TOPOLOGY, "Binding"): _cr(
        "rabbitmqClusterReference",
        "vhost source destination destinationType routingKey arguments",
        destinationType="exchange queue",
    ),
    (TOPOLOGY, "Policy"): _cr(
        "name pattern definition rabbitmqClusterReference",
        "vhost applyTo priority",
        applyTo="queues classic_queues quorum_queues exchanges all",
    ),
    (TOPOLOGY, "User"): _cr("rabbitmqClusterReference", "tags importCredentialsSecret"),
    (TOPOLOGY, "Permission"): _cr(
        "vhost permissions rabbitmqClusterReference", "user userReference"
    ),
}


def test_overlay_renders_into_its_namespace(overlay: str, objects: list[Obj]) -> None:
    ids = [(o["apiVersion"], o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(ids) == len(set(ids)), "duplicate objects"
    namespace = one(objects, "Namespace")
    assert namespace["metadata"]["name"] == NAMESPACES[overlay]
    for obj in objects:
        if obj is not namespace:
            assert obj["metadata"]["namespace"] == NAMESPACES[overlay], obj["metadata"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "dicom-bridge"
        assert obj["metadata"]["labels"]["environment"] == overlay
    (kustomization,) = _documents(KUSTOMIZE / "overlays" / overlay / "kustomization.yaml")
    (tag,) = [i["newTag"] for i in kustomization["images"] if i["name"] == APP_IMAGE]
    assert tag != "latest"
    for _, container, _ in deployments(objects):
        assert container["image"] == f"{APP_IMAGE}:{tag}"


def test_builtin_objects_match_the_kubernetes_openapi_schemas(objects: list[Obj]) -> None:
    errors = []
    for obj in objects:
        if obj["apiVersion"] not in BUILTIN_GROUPS:
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_custom_resources_are_structurally_valid(objects: list[Obj]) -> None:
    cluster_names = {o["metadata"]["name"] for o in find(objects, "RabbitmqCluster")}
    for obj in objects:
        if obj["apiVersion"] in BUILTIN_GROUPS:
            continue
        where = f"{obj['apiVersion']} {obj['kind']}/{obj['metadata']['name']}"
        rule = CUSTOM_RESOURCES.get((obj["apiVersion"], obj["kind"]))
        assert rule, f"{where}: neither a built-in kind nor a checked custom resource"
        assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}, where
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"]), where
        spec = obj["spec"]
        assert rule.required <= set(spec), f"{where}: missing {sorted(rule.required - set(spec))}"
        assert set(spec) <= rule.known, f"{where}: unknown {sorted(set(spec) - rule.known)}"
        for key, allowed in rule.enums.items():
            assert spec.get(key, next(iter(allowed))) in allowed, f"{where}: {key}"
        if obj["apiVersion"] == TOPOLOGY and obj["kind"] != "RabbitmqCluster":
            assert spec["rabbitmqClusterReference"] == {"name": next(iter(cluster_names))}
    for scaled in find(objects, "ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            # KEDA's trigger metadata is map[string]string: a number is rejected.
            assert all(isinstance(v, str) for v in trigger["metadata"].values()), trigger
            assert "host" not in trigger["metadata"], "credentials belong in a Secret"
            assert trigger["metadata"]["mode"] in {"QueueLength", "MessageRate"}
            assert trigger["metadata"]["protocol"] in {"auto", "amqp", "http"}
            auth = one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
            for ref in auth["spec"]["secretTargetRef"]:
                assert set(ref) == {"parameter", "name", "key"}, ref
    for user in find(objects, "User"):
        tags = set(user["spec"].get("tags", []))
        assert tags <= {"management", "policymaker", "monitoring", "administrator"}


# --- cross-checks with the code ---------------------------------------------------------------


def test_every_bridge_variable_is_a_settings_field(objects: list[Obj]) -> None:
    for deployment, container, kind in deployments(objects):
        names = set(environment(objects, container))
        assert names, deployment["metadata"]["name"]
        for name in names:
            assert name.startswith("BRIDGE_"), f"{name}: not a BRIDGE_* setting"
            field_name = name.removeprefix("BRIDGE_").lower()
            assert field_name in kind.model_fields, f"{name} is no field of {kind.__name__}"


def _materialize(objects: list[Obj], deployment: Obj, env: dict[str, str], root: Path) -> None:
    """Give each path under a volume mount a real counterpart under ``root``: the files of
    ConfigMap volumes, empty directories for the others; rewrite ``env`` to point there."""
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    original = dict(env)
    for mount in container_of(deployment)["volumeMounts"]:
        local = root / mount["mountPath"].lstrip("/")
        local.mkdir(parents=True, exist_ok=True)
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            data = one(objects, "ConfigMap", volume["configMap"]["name"])["data"]
            for key, text in data.items():
                (local / key).write_text(text, encoding="utf-8")
        for name, value in original.items():
            if value == mount["mountPath"] or value.startswith(mount["mountPath"] + "/"):
                env[name] = str(local) + value.removeprefix(mount["mountPath"])


def test_settings_from_the_manifests_load(
    objects: list[Obj], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real settings models accept every container's environment (values, ranges,
    reply_timeout below the DIMSE timeouts, the AE table file's content, ...)."""
    for deployment, container, kind in deployments(objects):
        env = environment(objects, container)
        _materialize(objects, deployment, env, tmp_path / deployment["metadata"]["name"])
        with monkeypatch.context() as patch:
            for name in [n for n in os.environ if n.startswith("BRIDGE_")]:
                patch.delenv(name)
            for name, value in env.items():
                patch.setenv(name, value)
            try:
                settings = load(kind)
            except ConfigError as exc:
                pytest.fail(f"{deployment['metadata']['name']}: {exc.message}")
        assert settings.log_format == "json"
        if isinstance(settings, BridgeSettings):
            values = settings.model_dump()
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports == {"dicom": values["port"], "http": values["http_port"]}


def test_ports_are_the_settings_defaults(objects: list[Obj]) -> None:
    dicom_port = default(BridgeSettings, "port")
    http_port = default(BridgeSettings, "http_port")
    _, container = bridge(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"dicom": dicom_port, "http": http_port}
    env = environment(objects, container)
    assert env["BRIDGE_PORT"] == str(dicom_port)
    assert env["BRIDGE_HTTP_PORT"] == str(http_port)
    dicom = one(objects, "Service", "dicom-bridge")
    metrics = one(objects, "Service", "dicom-bridge-metrics")
    assert [port_number(container, p["targetPort"]) for p in dicom["spec"]["ports"]] == [dicom_port]
    assert [port_number(container, p["targetPort"]) for p in metrics["spec"]["ports"]] == [
        http_port
    ]


def test_probes_use_the_health_endpoints_on_the_http_port(objects: list[Obj]) -> None:
    _, container = bridge(objects)
    http_port = default(BridgeSettings, "http_port")
    expected = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert port_number(container, get["port"]) == http_port, probe
    _, consumer_container = consumer(objects)
    assert not {"livenessProbe", "readinessProbe"} & set(consumer_container), "no HTTP port"


def test_termination_grace_period_outlasts_the_drain(objects: list[Obj]) -> None:
    deployment, container = bridge(objects)
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    drain_default = default(BridgeSettings, "drain_timeout")
    configured = float(environment(objects, container).get("BRIDGE_DRAIN_TIMEOUT", drain_default))
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    assert grace > drain_default
    assert grace > configured + pre_stop, (
        f"{grace} s <= drain {configured} s + preStop {pre_stop} s"
    )


def test_amqp_secret_references_and_placeholder(overlay: str, objects: list[Obj]) -> None:
    shape = secret_shape()
    secrets = find(objects, "Secret")
    if overlay == "production":
        assert secrets == [], "production must not apply placeholder credentials"
    else:
        (secret,) = secrets
        assert secret["metadata"]["name"] == AMQP_SECRET
        assert secret["stringData"] == shape
    references: list[tuple[str, str]] = []
    for _, container, _ in deployments(objects):
        (amqp,) = [v for v in container["env"] if v["name"] == "BRIDGE_AMQP_URL"]
        ref = amqp["valueFrom"]["secretKeyRef"]
        references.append((ref["name"], ref["key"]))
    for auth in find(objects, "TriggerAuthentication"):
        references += [(r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]]
    for user in find(objects, "User"):
        name = user["spec"]["importCredentialsSecret"]["name"]
        references += [(name, "username"), (name, "password")]
    assert {name for name, _ in references} == {AMQP_SECRET}
    assert {key for _, key in references} <= set(shape)
    # The three keys describe one user; the URL points at the RabbitmqCluster's Service.
    url = urlsplit(shape["amqp-url"])
    assert unquote(url.username or "") == shape["username"]
    assert unquote(url.password or "") == shape["password"]
    (cluster,) = find(objects, "RabbitmqCluster")
    assert url.hostname == cluster["metadata"]["name"]
    assert (url.scheme, url.port) in {("amqp", 5672), ("amqps", 5671)}
    assert "CHANGE-ME" in shape["password"], "only placeholder credentials belong in git"


def test_queue_name_exchange_and_bindings_agree(objects: list[Obj]) -> None:
    _, bridge_container = bridge(objects)
    _, consumer_container = consumer(objects)
    bridge_env = environment(objects, bridge_container)
    consumer_env = environment(objects, consumer_container)
    queue_name = consumer_env["BRIDGE_QUEUE"]
    exchange_name = consumer_env["BRIDGE_EXCHANGE"]
    assert bridge_env["BRIDGE_EXCHANGE"] == exchange_name
    # The exchange as the bridge and the SDK declare it: durable topic.
    exchange = next(e for e in find(objects, "Exchange") if e["spec"]["name"] == exchange_name)
    assert (exchange["spec"]["type"], exchange["spec"]["durable"]) == ("topic", True)
    assert not exchange["spec"].get("autoDelete")
    assert "arguments" not in exchange["spec"]
    # The queue as the SDK declares it: durable quorum queue with no other argument (a
    # different argument would make the SDK's declaration fail with PRECONDITION_FAILED).
    queue = next(q for q in find(objects, "Queue") if q["spec"]["name"] == queue_name)
    assert (queue["spec"]["type"], queue["spec"]["durable"]) == ("quorum", True)
    assert not queue["spec"].get("autoDelete")
    assert "arguments" not in queue["spec"]
    (scaled,) = find(objects, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "example-consumer"
    assert [t["metadata"]["queueName"] for t in scaled["spec"]["triggers"]] == [queue_name]
    # Bindings: exactly what the example consumer registers.
    expected = {r.binding for r in build(load(ConsumerSettings, queue=queue_name)).registrations}
    bound = {
        b["spec"]["routingKey"]
        for b in find(objects, "Binding")
        if b["spec"]["destination"] == queue_name
    }
    assert bound == expected
    for binding in find(objects, "Binding"):
        assert binding["spec"]["destinationType"] == "queue"
        assert binding["spec"]["source"] in {e["spec"]["name"] for e in find(objects, "Exchange")}
        assert binding["spec"]["destination"] in {q["spec"]["name"] for q in find(objects, "Queue")}


def test_policies_cover_the_work_queue_only(objects: list[Obj]) -> None:
    _, consumer_container = consumer(objects)
    queue_name = environment(objects, consumer_container)["BRIDGE_QUEUE"]
    queues = {q["spec"]["name"] for q in find(objects, "Queue")}
    exchanges = {e["spec"]["name"] for e in find(objects, "Exchange")}
    work = [p for p in find(objects, "Policy") if re.search(p["spec"]["pattern"], queue_name)]
    (policy,) = work
    definition = policy["spec"]["definition"]
    assert definition["delivery-limit"] >= 1
    dead_letter = definition["dead-letter-exchange"]
    assert dead_letter in exchanges
    # Dead letters land in a queue that the work-queue policy does not match (no loop).
    dead_queues = [
        b["spec"]["destination"]
        for b in find(objects, "Binding")
        if b["spec"]["source"] == dead_letter
    ]
    assert dead_queues
    assert set(dead_queues) <= queues
    assert not any(re.search(policy["spec"]["pattern"], q) for q in dead_queues)
    # The bridge's exclusive reply queues are classic: quorum_queues keeps them out.
    assert policy["spec"]["applyTo"] == "quorum_queues"
    for other in find(objects, "Policy"):
        assert other["spec"]["applyTo"] in {"quorum_queues", "queues"}


def test_pods_are_locked_down(objects: list[Obj]) -> None:
    uid = dockerfile_user()[0]
    for deployment, container, _ in deployments(objects):
        where = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, where
        assert pod["enableServiceLinks"] is False, where  # no <SERVICE>_PORT variables
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, where
        assert context["runAsUser"] == context["runAsGroup"] == context["fsGroup"] == uid
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["runAsNonRoot"] is True, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            resources = c["resources"]
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[part]), f"{where}: {part}"
            assert quantity(resources["limits"]["memory"]) >= quantity(
                resources["requests"]["memory"]
            )
        # A read-only root: every path the process writes is a mounted volume.
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/tmp" in mounts, where


def test_bulk_dir_is_one_shared_writable_volume(objects: list[Obj]) -> None:
    (claim,) = find(objects, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    seen = set()
    for deployment, container, kind in deployments(objects):
        assert "bulk_dir" in kind.model_fields
        bulk_dir = environment(objects, container)["BRIDGE_BULK_DIR"]
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == bulk_dir]
        assert not mount.get("readOnly"), "the bulk dir is written and deleted from"
        pvc = volumes[mount["name"]]["persistentVolumeClaim"]
        assert pvc["claimName"] == claim["metadata"]["name"]
        seen.add((bulk_dir, pvc["claimName"]))
    assert len(seen) == 1, f"bridge and consumer must share one path and claim: {seen}"
    assert seen == {(dockerfile_env()["BRIDGE_BULK_DIR"], claim["metadata"]["name"])}


def test_cstore_data_sets_are_received_on_the_bulk_volume(objects: list[Obj]) -> None:
    """The bridge receives C-STORE data sets into files (BRIDGE_RECEIVE_DIR): they must land
    on the bulk volume, not on /tmp, an emptyDir of 64Mi that one large instance would
    overflow (the kubelet then evicts the pod)."""
    deployment, container = bridge(objects)
    env = environment(objects, container)
    assert env.get("BRIDGE_RECEIVE_TO_DISK", "true") == "true"
    settings = BridgeSettings.model_construct(
        bulk_dir=Path(env["BRIDGE_BULK_DIR"]),
        receive_dir=Path(env["BRIDGE_RECEIVE_DIR"]) if "BRIDGE_RECEIVE_DIR" in env else None,
    )
    receive = PurePosixPath(settings.receive_directory)
    mounts = [m for m in container["volumeMounts"] if receive.is_relative_to(m["mountPath"])]
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    assert mount["mountPath"] == env["BRIDGE_BULK_DIR"], receive
    assert not mount.get("readOnly")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "persistentVolumeClaim" in volumes[mount["name"]]


def test_ae_table_is_a_mounted_configmap_file(objects: list[Obj]) -> None:
    deployment, container = bridge(objects)
    path = PurePosixPath(environment(objects, container)["BRIDGE_AE_TABLE"])
    assert "ae_table" in BridgeSettings.model_fields
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent)]
    assert mount["readOnly"] is True
    config_map = one(objects, "ConfigMap", volumes[mount["name"]]["configMap"]["name"])
    table = yaml.safe_load(config_map["data"][path.name])
    assert isinstance(table, dict), "AE table: a mapping of AE title to host/port"
    assert table, "AE table: empty"


def test_selectors_and_references_resolve(objects: list[Obj]) -> None:
    bridge_deployment, bridge_container = bridge(objects)
    consumer_deployment, _ = consumer(objects)
    bridge_pods = pod_labels(bridge_deployment)
    consumer_pods = pod_labels(consumer_deployment)
    for deployment in (bridge_deployment, consumer_deployment):
        assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels(deployment))
    for service in find(objects, "Service"):
        assert selects(service["spec"]["selector"], bridge_pods), service["metadata"]["name"]
        assert not selects(service["spec"]["selector"], consumer_pods)
    pdb = one(objects, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], bridge_pods)
    assert not selects(pdb["spec"]["selector"]["matchLabels"], consumer_pods)
    policies = {
        p["metadata"]["name"]: p["spec"]["podSelector"]["matchLabels"]
        for p in find(objects, "NetworkPolicy")
    }
    assert selects(policies["dicom-bridge"], bridge_pods)
    assert not selects(policies["dicom-bridge"], consumer_pods)
    assert selects(policies["example-consumer"], consumer_pods)
    assert not selects(policies["example-consumer"], bridge_pods)
    # The ServiceMonitor scrapes the metrics Service only, on a port it has.
    monitor = one(objects, "ServiceMonitor")
    scraped = [
        s
        for s in find(objects, "Service")
        if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert [s["metadata"]["name"] for s in scraped] == ["dicom-bridge-metrics"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    (port,) = [p for p in scraped[0]["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert port_number(bridge_container, port["targetPort"]) == default(BridgeSettings, "http_port")
    # Every ConfigMap and PVC a pod uses is part of the overlay.
    for deployment, container, _ in deployments(objects):
        for source in container.get("envFrom", []):
            one(objects, "ConfigMap", source["configMapRef"]["name"])
        for volume in deployment["spec"]["template"]["spec"]["volumes"]:
            if "configMap" in volume:
                one(objects, "ConfigMap", volume["configMap"]["name"])
            if "persistentVolumeClaim" in volume:
                one(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    for permission in find(objects, "Permission"):
        one(objects, "User", permission["spec"]["userReference"]["name"])


def _ports(rule: Obj) -> set[tuple[int, str]]:
    return {(p["port"], p.get("protocol", "TCP")) for p in rule.get("ports", [])}


def test_network_policies(objects: list[Obj]) -> None:
    (cluster,) = find(objects, "RabbitmqCluster")
    broker_pods = {
        "app.kubernetes.io/name": cluster["metadata"]["name"],  # set by the Cluster Operator
        "app.kubernetes.io/component": "rabbitmq",
    }
    dns = {(53, "UDP"), (53, "TCP")}
    amqp = {(5672, "TCP"), (5671, "TCP")}
    for policy in find(objects, "NetworkPolicy"):
        spec = policy["spec"]
        assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
        egress = spec["egress"]
        to_broker = [
            r
            for r in egress
            if any(
                t.get("podSelector", {}).get("matchLabels") == broker_pods for t in r.get("to", [])
            )
        ]
        assert [_ports(r) for r in to_broker] == [amqp], policy["metadata"]["name"]
        assert any(_ports(r) == dns for r in egress), policy["metadata"]["name"]
    bridge_policy = one(objects, "NetworkPolicy", "dicom-bridge")["spec"]
    dicom_port = default(BridgeSettings, "port")
    http_port = default(BridgeSettings, "http_port")
    ingress = bridge_policy["ingress"]
    assert any(_ports(r) == {(dicom_port, "TCP")} and "from" not in r for r in ingress)
    (metrics,) = [r for r in ingress if _ports(r) == {(http_port, "TCP")}]
    assert metrics["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert len(ingress) == 2
    assert "ingress" not in one(objects, "NetworkPolicy", "example-consumer")["spec"]


def test_production_is_bigger_than_dev() -> None:
    dev, production = rendered("dev"), rendered("production")
    assert bridge(dev)[0]["spec"]["replicas"] == 1
    assert bridge(production)[0]["spec"]["replicas"] >= 3
    assert "replicas" not in consumer(dev)[0]["spec"], "KEDA owns the consumer's replicas"
    for pick in (bridge, consumer):
        small, big = pick(dev)[1]["resources"], pick(production)[1]["resources"]
        for part in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                assert quantity(big[part][resource]) > quantity(small[part][resource])
    dev_scale, prod_scale = (
        one(dev, "ScaledObject")["spec"],
        one(production, "ScaledObject")["spec"],
    )
    assert prod_scale["minReplicaCount"] >= 2
    assert prod_scale["maxReplicaCount"] > dev_scale["maxReplicaCount"]
    assert one(dev, "RabbitmqCluster")["spec"]["replicas"] == 1
    # Quorum queues survive the loss of a minority: an odd number of at least three nodes.
    prod_nodes = one(production, "RabbitmqCluster")["spec"]["replicas"]
    assert prod_nodes >= 3
    assert prod_nodes % 2 == 1
    assert one(production, "Service", "dicom-bridge")["spec"]["type"] == "LoadBalancer"
    assert one(dev, "Service", "dicom-bridge")["spec"]["type"] == "ClusterIP"


def test_broker_accepts_the_bridges_largest_message(objects: list[Obj]) -> None:
    (cluster,) = find(objects, "RabbitmqCluster")
    assert cluster["spec"]["image"].startswith("rabbitmq:")  # the official image
    config = cluster["spec"]["rabbitmq"]["additionalConfig"]
    (limit,) = re.findall(r"^max_message_size\s*=\s*(\d+)\s*$", config, re.MULTILINE)
    assert int(limit) >= default(BridgeSettings, "max_message_size")


# --- the Dockerfile ---------------------------------------------------------------------------

DOCKERFILE = DEPLOY / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]]

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages: continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a continuation"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, rest in instructions:
        if keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(base, name, []))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def dockerfile() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))[1]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in dockerfile()[-1].all("ENV"):
        for word in shlex.split(args):
            name, _, value = word.partition("=")
            env[name] = value
    return env


def dockerfile_user() -> tuple[int, int]:
    user = dockerfile()[-1].all("USER")[-1]
    uid, _, gid = user.partition(":")
    return int(uid), int(gid)


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not the exec (JSON) form: {args}"
    assert all(isinstance(v, str) for v in value), args
    return value


def test_dockerfile_is_multi_stage_from_python_slim() -> None:
    args, stages = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    builder, final = stages[0], stages[-1]
    assert len(stages) == 2
    assert builder.name == "builder"
    for stage in stages:
        assert stage.base.startswith("python:3.11-slim"), stage.base
    # The builder makes wheels of the project and its dependencies.
    assert any("pip wheel" in run and "/wheels" in run for run in builder.all("RUN"))
    copied = {
        source
        for copy_args in builder.all("COPY")
        for source in shlex.split(copy_args)[:-1]
        if not source.startswith("--")
    }
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = {"pyproject.toml", pyproject["project"]["readme"]}
    needed |= {f"{p}/" for p in wheel["packages"]} | {f"{p}/" for p in wheel["force-include"]}
    assert needed <= copied, f"the builder does not copy {sorted(needed - copied)}"
    for path in needed:
        assert (ROOT / path).exists(), path
    # The context filter next to the Dockerfile lets exactly those through.
    ignore = [
        line
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", "an allow-list: everything else stays out of the context"
    assert {f"!{p}" for p in needed} <= set(ignore)
    # The final stage installs those wheels into a venv, offline, from the builder.
    (install,) = [r for r in final.all("RUN") if "--find-links" in r]
    assert "from=builder" in install
    assert "--no-index" in install
    assert "-m venv" in install
    assert final.all("COPY") == []


def test_dockerfile_final_stage_has_no_build_tools() -> None:
    final = dockerfile()[-1]
    tools = re.compile(
        r"\b(apt-get|apt|apk|gcc|g\+\+|cc|clang|make|build-essential|python3-dev|pip wheel)\b"
    )
    for run in final.all("RUN"):
        assert not tools.search(run), run


def test_dockerfile_runs_as_a_fixed_non_root_user() -> None:
    final = dockerfile()[-1]
    uid, gid = dockerfile_user()
    assert uid >= 1000
    assert gid >= 1000
    (create,) = [r for r in final.all("RUN") if "useradd" in r]
    assert f"--uid {uid}" in create
    assert f"--gid {gid}" in create
    # The user exists before USER; nothing runs as root after it.
    keywords = [kw for kw, _ in final.instructions]
    assert "RUN" not in keywords[keywords.index("USER") :]


def test_dockerfile_ports_entrypoint_and_env() -> None:
    final = dockerfile()[-1]
    (expose,) = final.all("EXPOSE")
    ports = {int(p.split("/")[0]) for p in expose.split()}
    assert ports == {default(BridgeSettings, "port"), default(BridgeSettings, "http_port")}
    (entrypoint,) = final.all("ENTRYPOINT")
    (cmd,) = final.all("CMD")
    assert exec_form(entrypoint) == ["dicom-bridge"]
    assert exec_form(cmd) == ["serve"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "dicom-bridge" in pyproject["project"]["scripts"]
    assert "serve" in cli.commands
    for _, container, _ in deployments(rendered("dev")):
        assert container["args"][0] in cli.commands
        assert "command" not in container, "keep the image's ENTRYPOINT"
    for name in dockerfile_env():
        if name.startswith("BRIDGE_"):
            field_name = name.removeprefix("BRIDGE_").lower()
            assert field_name in BridgeSettings.model_fields
            assert field_name in ConsumerSettings.model_fields


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[int]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.process
def test_dockerfile_healthcheck_uses_python_stdlib_only(health_server: int) -> None:
    final = dockerfile()[-1]
    (healthcheck,) = final.all("HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert "--interval=" in options
    assert "--timeout=" in options
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"]
    assert len(argv) == 3
    code = argv[2]
    assert not re.search(r"\b(curl|wget|requests|httpx)\b", code)
    assert "/healthz" in code
    assert "'8080'" in code
    assert "BRIDGE_HTTP_PORT" in code
    (imported,) = re.findall(r"^import ([\w., ]+?);", code)
    assert {m.strip() for m in imported.split(",")} <= {"os", "sys", "urllib.request"}

    # Run it as Docker would (the image's python is the same interpreter family): healthy on
    # 200, unhealthy on 503 and when nothing listens.
    def probe(http_port: int) -> int:
        env = {"BRIDGE_HTTP_PORT": str(http_port)}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, timeout=10, check=False
        )
        return done.returncode

    assert probe(health_server) == 0
    _Health.status = 503
    try:
        assert probe(health_server) != 0
    finally:
        _Health.status = 200
    assert probe(_closed_port()) != 0
