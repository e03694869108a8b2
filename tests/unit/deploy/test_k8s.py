"""deploy/k8s: render base and overlays with the real kustomize, validate every object.

* Kubernetes kinds: ``kubernetes-validate`` (the Kubernetes OpenAPI schemas, offline) in strict
  mode, so an unknown or misspelt field is an error, as with ``kubectl apply --validate=strict``.
* The KEDA ScaledObject: the pydantic model that ``cloudcoil-models-keda`` generates from KEDA's
  own CRD schema. That model checks required fields and types but silently drops unknown
  fields, so :func:`keda_problems` also compares what it kept with what it was given; any key
  it dropped is reported (strict field validation, as the API server does for CRDs).
* Then what the schemas cannot know: the env names are real settings and load, probes hit
  the worker's endpoints, KEDA scales the worker's group, the trainer and the worker share
  the model store, the GPU overlay asks for a GPU.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from functools import cache
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication
from pydantic import BaseModel, ValidationError

from pipeline.common.settings_doc import env_rows
from pipeline.worker.settings import WorkerSettings, load_worker_settings
from tests.support.cli import check_command_line
from tests.support.tools import ROOT, require_tool
from trainer.settings import TrainerSettings, load_trainer_settings

K8S = ROOT / "deploy" / "k8s"
LAYERS = ["base", "overlays/cpu", "overlays/gpu", "overlays/object-store"]
OBJECT_STORE = "overlays/object-store"
KEDA_MODELS: dict[str, type[BaseModel]] = {
    "ScaledObject": ScaledObject,
    "TriggerAuthentication": TriggerAuthentication,
}
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
KNOWN_ENV = {e for e, _, _ in env_rows(WorkerSettings, "PIPELINE_")} | {
    e for e, _, _ in env_rows(TrainerSettings, "TRAINER_")
}
Doc = dict[str, Any]


@cache
def render(layer: str) -> tuple[Doc, ...]:
    done = subprocess.run(
        [require_tool("kustomize"), "build", str(K8S / layer)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"kustomize build {layer}: {done.stderr}"
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def one(docs: tuple[Doc, ...], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(doc: Doc) -> Doc:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def container(doc: Doc) -> Doc:
    (c,) = pod_spec(doc)["containers"]
    return c  # type: ignore[no-any-return]


def env_of(docs: tuple[Doc, ...], workload: Doc) -> dict[str, str]:
    """The env a container sees from its ConfigMap/Secret refs and literal env entries."""
    env: dict[str, str] = {}
    for ref in container(workload).get("envFrom", []):
        if "configMapRef" in ref:
            env.update(one(docs, "ConfigMap", ref["configMapRef"]["name"])["data"])
        else:
            secret = one(docs, "Secret", ref["secretRef"]["name"])
            env.update(secret.get("stringData", {}))
    for item in container(workload).get("env", []):
        env[item["name"]] = item.get("value", "pod-name-from-field-ref")
    return env


# ------------------------------------------------------------------ KEDA strictness
def keda_problems(doc: Doc) -> list[str]:
    """Errors of a KEDA object against its CRD model, unknown fields included."""
    try:
        model = KEDA_MODELS[doc["kind"]].model_validate(doc)
    except ValidationError as exc:
        return [f"{'/'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    kept = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return [f"{path}: unknown field" for path in _dropped(doc, kept, "")]


def _dropped(given: Any, kept: Any, path: str) -> Iterator[str]:
    if isinstance(given, dict):
        for key, value in given.items():
            if not isinstance(kept, dict) or key not in kept:
                yield f"{path}/{key}"
            else:
                yield from _dropped(value, kept[key], f"{path}/{key}")
    elif isinstance(given, list) and isinstance(kept, list):
        for i, (g, k) in enumerate(zip(given, kept, strict=False)):
            yield from _dropped(g, k, f"{path}/{i}")


# ------------------------------------------------------------------------ schemas
@pytest.mark.parametrize("layer", LAYERS)
def test_every_object_validates_against_the_kubernetes_and_keda_schemas(layer):
    docs = render(layer)
    kinds = sorted(d["kind"] for d in docs)
    storage = ["Secret"] if layer == OBJECT_STORE else ["PersistentVolumeClaim"] * 2
    assert kinds == sorted(
        [
            "Namespace",
            "ConfigMap",
            "ConfigMap",
            "Secret",
            *storage,
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "ScaledObject",
            "TriggerAuthentication",
            "CronJob",
        ]
    )
    for doc in docs:
        where = f"{layer}: {doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in KEDA_MODELS:
            assert keda_problems(doc) == [], where
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where} invalid for Kubernetes {version}: {exc.message}")
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "anomaly-pipeline", where


def test_the_validators_reject_what_they_should():
    """The checks above can fail: a misspelt field and a missing one are caught."""
    deployment = one(render("base"), "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    container(broken)["livenessProbe"]["httpGett"] = {"path": "/healthz"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)

    scaled = one(render("base"), "ScaledObject")
    typo = yaml.safe_load(yaml.safe_dump(scaled))
    typo["spec"]["maxReplicaCont"] = 9
    typo["spec"]["triggers"][0]["metdata"] = {}
    assert sorted(keda_problems(typo)) == [
        "/spec/maxReplicaCont: unknown field",
        "/spec/triggers/0/metdata: unknown field",
    ]
    missing = yaml.safe_load(yaml.safe_dump(scaled))
    del missing["spec"]["scaleTargetRef"]
    assert any("scaleTargetRef" in p for p in keda_problems(missing))
    wrong_type = yaml.safe_load(yaml.safe_dump(scaled))
    wrong_type["spec"]["maxReplicaCount"] = "three"
    assert keda_problems(wrong_type)


# ------------------------------------------------------------------- semantics
@pytest.mark.parametrize("layer", LAYERS)
def test_settings_are_real_and_load(layer, monkeypatch, tmp_path):
    docs = render(layer)
    monkeypatch.chdir(tmp_path)  # no stray .env
    for kind, name, prefix, load in [
        ("Deployment", "anomaly-worker", "PIPELINE_", load_worker_settings),
        ("CronJob", "anomaly-trainer", "TRAINER_", load_trainer_settings),
    ]:
        env = env_of(docs, one(docs, kind, name))
        assert env, name
        # AWS_*: the object-store credentials s3fs reads (overlays/object-store)
        assert all(key.startswith((prefix, "AWS_")) for key in env), env
        unknown = {k for k in env if not k.startswith("AWS_")} - KNOWN_ENV
        assert not unknown, f"{name}: not settings: {unknown}"
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = load()  # raises ConfigError naming the env var on a bad name or value
        assert settings is not None


def test_worker_probes_ports_and_rollout():
    docs = render("base")
    worker = one(docs, "Deployment", "anomaly-worker")
    env = env_of(docs, worker)
    c = container(worker)
    port = int(env["PIPELINE_METRICS_PORT"])
    assert c["ports"] == [{"name": "metrics", "containerPort": port}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert "replicas" not in worker["spec"], "KEDA owns the replica count"
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    template = worker["spec"]["template"]["metadata"]
    assert template["annotations"]["prometheus.io/port"] == str(port)
    service = one(docs, "Service")
    assert service["spec"]["selector"].items() <= template["labels"].items()
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= template["labels"].items()
    assert pdb["spec"]["maxUnavailable"] == 1


def test_keda_scales_the_worker_group_on_its_input_lag():
    docs = render("base")
    worker = one(docs, "Deployment", "anomaly-worker")
    env = env_of(docs, worker)
    spec = one(docs, "ScaledObject")["spec"]
    assert spec["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == env["PIPELINE_GROUP_ID"]
    assert meta["topic"] == env["PIPELINE_INPUT_TOPIC"]
    # the bootstrap address is read from the worker's env, i.e. from the one ConfigMap
    assert "bootstrapServers" not in meta
    assert meta["bootstrapServersFromEnv"] == "PIPELINE_KAFKA__BOOTSTRAP_SERVERS"
    assert env[meta["bootstrapServersFromEnv"]]
    assert meta["allowIdleConsumers"] == "false", "at most one worker per partition"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    # SASL/TLS of KEDA's own client: the mode matches the worker's, the secrets are the worker's
    protocol = env["PIPELINE_KAFKA__SECURITY_PROTOCOL"]
    assert (meta["sasl"] != "none") == protocol.startswith("SASL")
    assert (meta["tls"] == "enable") == protocol.endswith("SSL")
    auth = one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    assert set(refs) == {"username", "password"}
    worker_secrets = {
        r["secretRef"]["name"] for r in container(worker)["envFrom"] if "secretRef" in r
    }
    for param, setting in [("username", "SASL_USERNAME"), ("password", "SASL_PASSWORD")]:
        assert refs[param]["name"] in worker_secrets
        assert refs[param]["key"] == f"PIPELINE_KAFKA__{setting}"
        assert refs[param]["key"] in one(docs, "Secret", refs[param]["name"])["stringData"]


def test_object_store_overlay_has_no_shared_volume():
    docs = render(OBJECT_STORE)
    worker = one(docs, "Deployment", "anomaly-worker")
    trainer = one(docs, "CronJob", "anomaly-trainer")
    wenv, tenv = env_of(docs, worker), env_of(docs, trainer)
    assert wenv["PIPELINE_MODEL_STORE"] == tenv["TRAINER_MODEL_STORE"]
    assert wenv["PIPELINE_MODEL_STORE"].startswith("s3://")
    assert tenv["TRAINER_DATA"].startswith("s3://")
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    for workload in (worker, trainer):
        volumes = pod_spec(workload)["volumes"]
        assert all("persistentVolumeClaim" not in v for v in volumes)
        assert {m["mountPath"] for m in container(workload)["volumeMounts"]} == {"/tmp"}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env_of(docs, workload))


@pytest.mark.parametrize("layer", [x for x in LAYERS if x != OBJECT_STORE])
def test_trainer_and_worker_share_the_model_store(layer):
    docs = render(layer)
    worker = one(docs, "Deployment", "anomaly-worker")
    trainer = one(docs, "CronJob", "anomaly-trainer")
    wenv, tenv = env_of(docs, worker), env_of(docs, trainer)
    assert wenv["PIPELINE_MODEL_NAME"] == tenv["TRAINER_NAME"]

    def store_claim(workload: Doc, path: str) -> tuple[str, bool]:
        (mount,) = [m for m in container(workload)["volumeMounts"] if m["mountPath"] == path]
        (volume,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"]]
        return volume["persistentVolumeClaim"]["claimName"], mount.get("readOnly", False)

    w_claim, w_ro = store_claim(worker, wenv["PIPELINE_MODEL_STORE"])
    t_claim, t_ro = store_claim(trainer, tenv["TRAINER_MODEL_STORE"])
    assert w_claim == t_claim
    assert (w_ro, t_ro) == (True, False)
    pvc = one(docs, "PersistentVolumeClaim", w_claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert trainer["spec"]["concurrencyPolicy"] == "Forbid"


@pytest.mark.parametrize("layer", LAYERS)
def test_commands_are_real_entry_points(layer):
    for doc in render(layer):
        if doc["kind"] not in ("Deployment", "CronJob"):
            continue
        cmd = container(doc)["command"]
        check_command_line(cmd)


def test_gpu_overlay_asks_for_a_gpu_and_the_cpu_overlay_does_not():
    gpu, cpu = render("overlays/gpu"), render("overlays/cpu")
    for name, kind in [("anomaly-worker", "Deployment"), ("anomaly-trainer", "CronJob")]:
        g = one(gpu, kind, name)
        assert container(g)["resources"]["limits"]["nvidia.com/gpu"] == "1", name
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec(
            g
        )["tolerations"]
        assert "nvidia.com/gpu" not in container(one(cpu, kind, name))["resources"].get(
            "limits", {}
        )
    assert env_of(gpu, one(gpu, "Deployment"))["PIPELINE_DEVICE"] == "cuda"
    assert env_of(gpu, one(gpu, "CronJob"))["TRAINER_DEVICE"] == "cuda"
    assert env_of(cpu, one(cpu, "Deployment"))["PIPELINE_DEVICE"] == "cpu"
    assert env_of(cpu, one(cpu, "CronJob"))["TRAINER_DEVICE"] == "cpu"
