"""docker-compose.yml cannot run here (no Docker engine), so check what it relies on."""

from pathlib import Path

import yaml

from pipeline.cli import cli as pipeline_cli
from pipeline.settings import WorkerSettings
from pipeline.settings_doc import env_rows
from trainer.cli import cli as trainer_cli
from trainer.settings import TrainerSettings

ROOT = Path(__file__).parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
CLIS = {"pipeline": pipeline_cli, "trainer": trainer_cli}
KNOWN_ENV = {e for e, _, _ in env_rows(WorkerSettings, "PIPELINE_")} | {
    e for e, _, _ in env_rows(TrainerSettings, "TRAINER_")
}


def project_services():
    return {n: s for n, s in SERVICES.items() if s.get("image", "").startswith("anomaly-pipeline")}


def test_every_project_service_runs_a_real_entry_point():
    services = project_services()
    assert {"trainer", "worker"} <= set(services)
    for name, svc in services.items():
        cmd = svc["command"]
        assert cmd[:2] == ["python", "-m"], name
        group = CLIS[cmd[2]]
        assert cmd[3] in group.commands, f"{name}: {cmd[2]} has no command {cmd[3]!r}"
        command = group.commands[cmd[3]]
        command.make_context(cmd[3], list(cmd[4:]))  # raises on unknown or missing options


def test_environment_names_are_real_settings():
    for name, svc in project_services().items():
        for key in svc.get("environment", {}):
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
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = [
        t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    ]
    assert f"worker:{port}" in targets


def test_trainer_and_worker_share_the_model_store_and_start_in_order():
    trainer, worker = SERVICES["trainer"], SERVICES["worker"]
    store = trainer["environment"]["TRAINER_MODEL_STORE"]
    assert worker["environment"]["PIPELINE_MODEL_STORE"] == store
    assert any(v.endswith(f":{store}") for v in worker["volumes"])
    assert any(v.endswith(f":{store}") for v in trainer["volumes"])
    assert worker["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert worker["environment"]["PIPELINE_MODEL_NAME"] == trainer["environment"]["TRAINER_NAME"]
    assert "kafka:9092" in worker["environment"]["PIPELINE_KAFKA__BOOTSTRAP_SERVERS"]
