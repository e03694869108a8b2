"""docker-compose.yml cannot run here (no Docker engine), so check what it relies on."""

import json
import re
import subprocess
from pathlib import Path

import yaml

from pipeline.common.settings_doc import env_rows
from pipeline.worker.settings import WorkerSettings
from tests.support.cli import check_command_line
from tests.support.tools import require_tool
from trainer.settings import TrainerSettings

ROOT = Path(__file__).parents[3]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
KNOWN_ENV = {e for e, _, _ in env_rows(WorkerSettings, "PIPELINE_")} | {
    e for e, _, _ in env_rows(TrainerSettings, "TRAINER_")
}


def test_compose_loads_as_docker_compose_loads_it():
    """compose-go (the library behind `docker compose`) validates against the compose spec."""
    done = subprocess.run(
        [require_tool("composecheck"), str(ROOT / "docker-compose.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == sorted(SERVICES)


def project_services():
    return {n: s for n, s in SERVICES.items() if s.get("image", "").startswith("anomaly-pipeline")}


def test_every_project_service_runs_a_real_entry_point():
    services = project_services()
    assert {"trainer", "worker", "worker-gpu", "alerts"} <= set(services)
    for svc in services.values():
        check_command_line(svc["command"])  # raises on unknown or missing options


def test_environment_names_are_real_settings():
    for name, svc in project_services().items():
        for key in svc.get("environment", {}):
            if key.startswith("AWS_"):  # the object store's client (s3fs), not our settings
                continue
            assert key in KNOWN_ENV, f"{name}: unknown setting {key}"


def test_volumes_ports_and_mounts_are_declared():
    declared = set(COMPOSE["volumes"])
    for name, svc in SERVICES.items():
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: missing bind mount {source}"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
    worker = SERVICES["worker"]
    port = worker["environment"]["PIPELINE_METRICS_PORT"]
    assert f"{port}:{port}" in worker["ports"]
    assert "9090:9090" in SERVICES["prometheus"]["ports"]
    assert "3000:3000" in SERVICES["grafana"]["ports"]
    published = [p.split(":")[0] for svc in SERVICES.values() for p in svc.get("ports", [])]
    assert len(published) == len(set(published)), "two services publish one host port"


def mounts(service: str) -> dict[str, Path]:
    """container path -> repository path of a service's bind mounts (which must exist)."""
    out = {}
    for vol in SERVICES[service].get("volumes", []):
        source, target = vol.split(":")[:2]
        if source.startswith("."):
            path = ROOT / source
            assert path.exists(), f"{service}: missing bind mount {source}"
            out[target] = path
    return out


def in_container(service: str, container_path: str) -> Path:
    """The repository file a container path of ``service`` maps to through a bind mount."""
    for target, source in sorted(mounts(service).items(), key=lambda kv: -len(kv[0])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source / Path(container_path).relative_to(target)
    raise AssertionError(f"{service}: nothing mounted at {container_path}")


def test_prometheus_loads_the_rules_and_scrapes_every_worker_service():
    prom = SERVICES["prometheus"]
    flag = next(a for a in prom["command"] if a.startswith("--config.file="))
    config_path = flag.split("=", 1)[1]
    config = yaml.safe_load(in_container("prometheus", config_path).read_text())
    for pattern in config["rule_files"]:
        container_glob = str(Path(config_path).parent / pattern)
        directory = in_container("prometheus", str(Path(container_glob).parent))
        assert list(directory.glob(Path(pattern).name)), f"no rule file matches {pattern}"
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "anomaly-worker"  # the alerting rules select this job
    (dns,) = job["dns_sd_configs"]
    workers = {n for n, svc in project_services().items() if svc["command"][3:4] == ["run"]}
    assert set(dns["names"]) == workers
    for name in workers:
        assert int(SERVICES[name]["environment"]["PIPELINE_METRICS_PORT"]) == dns["port"]


def test_grafana_provisions_the_datasource_and_the_dashboard():
    grafana = SERVICES["grafana"]
    provisioning = in_container("grafana", "/etc/grafana/provisioning")
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", source["url"]).groups()
    assert host in SERVICES
    assert f"{port}:{port}" in SERVICES[host]["ports"]
    (provider,) = yaml.safe_load(
        (provisioning / "dashboards" / "anomaly-pipeline.yml").read_text()
    )["providers"]
    dashboards = in_container("grafana", provider["options"]["path"])
    assert list(dashboards.glob("*.json"))
    home = in_container(
        "grafana", grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    )
    assert json.loads(home.read_text())["uid"] == "anomaly-pipeline"


def test_gpu_worker_is_a_profile_of_the_same_group():
    cpu, gpu = SERVICES["worker"], SERVICES["worker-gpu"]
    assert "profiles" not in cpu
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["environment"]["PIPELINE_DEVICE"] == "cuda"
    for key in ("PIPELINE_GROUP_ID", "PIPELINE_INPUT_TOPIC", "PIPELINE_MODEL_STORE"):
        assert gpu["environment"][key] == cpu["environment"][key], key
    assert gpu["volumes"] == cpu["volumes"]
    profiles = {p for svc in SERVICES.values() for p in svc.get("profiles", [])}
    assert profiles == {"gpu", "object-store"}


def test_alert_consumer_reads_the_workers_alert_topic():
    alerts, worker = SERVICES["alerts"]["environment"], SERVICES["worker"]["environment"]
    assert alerts["PIPELINE_ALERT_TOPIC"] == worker["PIPELINE_ALERT_TOPIC"]
    assert (
        alerts["PIPELINE_KAFKA__BOOTSTRAP_SERVERS"] == worker["PIPELINE_KAFKA__BOOTSTRAP_SERVERS"]
    )


def test_trainer_and_worker_share_the_model_store_and_start_in_order():
    trainer, worker = SERVICES["trainer"], SERVICES["worker"]
    store = trainer["environment"]["TRAINER_MODEL_STORE"]
    assert worker["environment"]["PIPELINE_MODEL_STORE"] == store
    assert any(v.endswith(f":{store}") for v in worker["volumes"])
    assert any(v.endswith(f":{store}") for v in trainer["volumes"])
    assert worker["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert worker["environment"]["PIPELINE_MODEL_NAME"] == trainer["environment"]["TRAINER_NAME"]
    assert "kafka:9092" in worker["environment"]["PIPELINE_KAFKA__BOOTSTRAP_SERVERS"]


def test_object_store_profile_shares_the_store_on_s3_without_a_model_volume():
    trainer, worker, s3 = SERVICES["trainer-s3"], SERVICES["worker-s3"], SERVICES["s3"]
    store = trainer["environment"]["TRAINER_MODEL_STORE"]
    assert store.startswith("s3://")
    assert worker["environment"]["PIPELINE_MODEL_STORE"] == store
    assert worker["volumes"] == []
    assert not [v for v in trainer["volumes"] if v.startswith("models:")]
    assert worker["depends_on"]["trainer-s3"]["condition"] == "service_completed_successfully"
    bucket = store.split("/")[2]
    assert SERVICES["s3-bucket"]["command"][-1] == f"/objects/{bucket}"
    assert s3["environment"]["JCLOUDS_FILESYSTEM_BASEDIR"] == "/objects"
    port = s3["environment"]["S3PROXY_ENDPOINT"].rsplit(":", 1)[1]
    for svc in (trainer, worker):
        env = svc["environment"]
        assert env["AWS_ENDPOINT_URL"] == f"http://s3:{port}"
        assert env["AWS_ACCESS_KEY_ID"] == s3["environment"]["S3PROXY_IDENTITY"]
        assert env["AWS_SECRET_ACCESS_KEY"] == s3["environment"]["S3PROXY_CREDENTIAL"]
    for svc in SERVICES.values():  # every image pinned to a version tag
        image = svc.get("image", "")
        if image and not image.startswith("anomaly-pipeline"):
            assert ":" in image and not image.endswith(":latest"), image
