"""Every worker setting, given a value of the wrong kind, fails at start naming its env var: in
process (ConfigError) and through a real ``python -m pipeline run`` (exit 2, the env var in
stderr, before the model or Kafka is touched). Unknown PIPELINE_* variables are warned about
with the closest name, except Kubernetes service links; unknown keys in .env fail."""

from __future__ import annotations

import os

import pytest

from pipeline.common.envvars import env_names, unknown_env
from pipeline.contract.exceptions import ConfigError
from pipeline.worker.settings import WorkerSettings, load_worker_settings
from tests.support.cli import run_module

SASL = {
    "PIPELINE_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "PIPELINE_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
    "PIPELINE_KAFKA__SASL_USERNAME": "u",
    "PIPELINE_KAFKA__SASL_PASSWORD": "p",
}

# env var -> (bad values, other env it needs, the name the error must carry)
BAD: dict[str, tuple[list[str], dict[str, str], str | None]] = {
    "PIPELINE_KAFKA__BOOTSTRAP_SERVERS": (["", "host", "host:abc", "host:0", "a b:9092"], {}, None),
    "PIPELINE_KAFKA__CLIENT_ID": ([""], {}, None),
    "PIPELINE_KAFKA__SECURITY_PROTOCOL": (["TLS", "SASL_SSL"], {}, "PIPELINE_KAFKA"),
    "PIPELINE_KAFKA__SASL_MECHANISM": (["GSSAPI"], {}, None),
    "PIPELINE_KAFKA__SASL_USERNAME": ([""], SASL, "PIPELINE_KAFKA"),
    "PIPELINE_KAFKA__SASL_PASSWORD": ([], {}, None),  # free-form; required with SASL (above)
    "PIPELINE_KAFKA__SSL_CAFILE": (["/nonexistent/ca.pem"], {}, None),
    "PIPELINE_KAFKA__SSL_CERTFILE": (["/nonexistent/cert.pem"], {}, None),
    "PIPELINE_KAFKA__SSL_KEYFILE": (["/nonexistent/key.pem"], {}, None),
    "PIPELINE_KAFKA__SSL_PASSWORD": ([], {}, None),  # free-form secret
    "PIPELINE_KAFKA__REQUEST_TIMEOUT_MS": (["0", "soon"], {}, None),
    "PIPELINE_KAFKA__BOOTSTRAP_TIMEOUT_MS": (["-1", "1.5x"], {}, None),
    "PIPELINE_KAFKA__RECONNECT_BACKOFF_MAX_MS": (["0"], {}, None),
    "PIPELINE_BATCH__MAX_SIZE": (["0", "2000000", "many"], {}, None),
    "PIPELINE_BATCH__MAX_WAIT_MS": (["-1", "60001", "soon"], {}, None),
    "PIPELINE_INPUT_TOPIC": (["", "in put", "a,b/c", ","], {}, None),
    "PIPELINE_INPUT_PATTERN": (["(unclosed"], {}, None),
    "PIPELINE_ALERT_TOPIC": (["", "bad topic", "."], {}, None),
    "PIPELINE_DLQ_TOPIC": (["", "x" * 250], {}, None),
    "PIPELINE_SCORES_TOPIC": (["sc*res"], {}, None),
    "PIPELINE_GROUP_ID": ([""], {}, None),
    "PIPELINE_SESSION_TIMEOUT_MS": (["1000", "2000000"], {}, None),
    "PIPELINE_START_FROM": (["beginning", "timestamp"], {}, None),
    "PIPELINE_START_TIMESTAMP_MS": (["-1", "yesterday"], {}, None),
    "PIPELINE_CREATE_TOPICS": (["maybe"], {}, None),
    "PIPELINE_TOPIC_PARTITIONS": (["0"], {}, None),
    "PIPELINE_TOPIC_REPLICATION": (["0"], {}, None),
    "PIPELINE_TOPIC_MIN_INSYNC_REPLICAS": (["0", "two"], {}, None),
    "PIPELINE_MODEL_STORE": ([""], {}, None),
    "PIPELINE_MODEL_NAME": (["", "../etc", "a/b"], {}, None),
    "PIPELINE_MODEL_VERSION": (["../../x"], {}, None),
    "PIPELINE_ID_FIELD": ([], {}, None),  # any JSON key
    "PIPELINE_ENTITY_FROM": (["header"], {}, None),
    "PIPELINE_ENTITY_FIELD": ([""], {}, None),
    "PIPELINE_ENTITY_MEMORY_MB": (["0", "-1", "lots"], {}, None),
    "PIPELINE_DEVICE": (["tpu"], {}, None),
    "PIPELINE_TORCH_THREADS": (["-1", "2048"], {}, None),
    "PIPELINE_TOP_K": (["-1", "101"], {}, None),
    "PIPELINE_INCLUDE_RECORD": (["perhaps"], {}, None),
    "PIPELINE_MAX_RECORD_BYTES": (["0"], {}, None),
    "PIPELINE_METRICS_PORT": (["70000", "tcp://10.0.0.1:9108"], {}, None),
    "PIPELINE_METRICS_HOST": (["not a host", "-bad-"], {}, None),
    "PIPELINE_DELIVERY": (["at-most-once"], {}, None),
    "PIPELINE_TRANSACTIONAL_ID": ([], {}, None),  # any string; empty means the default
    "PIPELINE_TRANSACTION_TIMEOUT_MS": (["999", "900001", "1m"], {}, None),
    "PIPELINE_RELOAD_INTERVAL_S": (["-1", "often"], {}, None),
    "PIPELINE_DRIFT_HALF_LIFE_RECORDS": (["0", "-5", "many"], {}, None),
    "PIPELINE_ANNOUNCE_TOPIC": (["models!"], {}, None),
    "PIPELINE_SHADOW_MODEL_NAME": (["../x"], {}, None),
    "PIPELINE_SHADOW_MODEL_VERSION": ([".hidden"], {}, None),
    "PIPELINE_SHADOW_TOPIC": (["shadow", "s t"], {}, None),  # "shadow": needs a shadow model
    "PIPELINE_LIVENESS_TIMEOUT_S": (["0"], {}, None),
    "PIPELINE_MAX_BATCH_RETRIES": (["-1"], {}, None),
    "PIPELINE_RETRY_BACKOFF_S": (["-0.5"], {}, None),
    "PIPELINE_LOG_LEVEL": (["verbose"], {}, None),
    "PIPELINE_LOG_FORMAT": (["xml"], {}, None),
}
CASES = [
    pytest.param(env, value, extra, named or env, id=f"{env}={value[:20]}")
    for env, (values, extra, named) in BAD.items()
    for value in values
]


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no stray .env
    for key in list(os.environ):
        if key.startswith("PIPELINE_"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_every_setting_has_bad_values_here():
    """A new setting must come with its invalid values (or be marked free-form above)."""
    assert set(BAD) == set(env_names(WorkerSettings, "PIPELINE_"))


@pytest.mark.parametrize(("key", "value", "extra", "named"), CASES)
def test_a_bad_value_fails_at_start_naming_the_env_var(env, key, value, extra, named):
    for k, v in (extra | {key: value}).items():
        env.setenv(k, v)
    with pytest.raises(ConfigError) as err:
        load_worker_settings()
    expected = "PIPELINE_" if (key, value) == ("PIPELINE_SHADOW_TOPIC", "shadow") else named
    assert expected in str(err.value)


def test_the_real_command_exits_2_naming_every_bad_setting(tmp_path):
    """``python -m pipeline run`` with one bad value for every setting at once (it fails before
    importing torch or touching the model): exit 2 and each env var named; then the rules
    that span fields, one process each."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    single = {env: values[0] for env, (values, extra, _) in BAD.items() if values and not extra}
    single["PIPELINE_SHADOW_TOPIC"] = "s t"
    runs = [
        (single, set(single)),
        (SASL | {"PIPELINE_KAFKA__SASL_USERNAME": ""}, {"PIPELINE_KAFKA"}),
        ({"PIPELINE_SHADOW_TOPIC": "shadow"}, {"PIPELINE_"}),
    ]
    for env, named in runs:
        run = run_module("pipeline", "run", env=base | env, cwd=tmp_path, timeout=120)
        assert run.returncode == 2, run.stderr[-2000:]
        assert run.stderr.startswith("error: invalid settings:"), run.stderr[-2000:]
        missing = {name for name in named if name not in run.stderr}
        assert not missing, (missing, run.stderr)
        assert "Traceback" not in run.stderr


@pytest.mark.parametrize("value", ["true", "false"])
def test_the_removed_overlap_setting_fails_at_start_naming_it(env, tmp_path, value):
    """PIPELINE_OVERLAP_COMPUTE is gone (it broke exactly-once fencing): a deployment that
    still sets it, to anything, is refused at start rather than silently ignored."""
    env.setenv("PIPELINE_OVERLAP_COMPUTE", value)
    with pytest.raises(
        ConfigError, match=r"PIPELINE_OVERLAP_COMPUTE \(overlap_compute\) was removed"
    ):
        load_worker_settings()
    env.delenv("PIPELINE_OVERLAP_COMPUTE")
    with pytest.raises(ConfigError, match="overlap_compute"):
        load_worker_settings(overlap_compute=True)
    (tmp_path / ".env").write_text(f"PIPELINE_OVERLAP_COMPUTE={value}\n")
    env.chdir(tmp_path)
    with pytest.raises(ConfigError, match="PIPELINE_OVERLAP_COMPUTE"):  # .env: unknown-key check
        load_worker_settings()


def test_secrets_are_not_echoed_in_the_error(env):
    env.setenv("PIPELINE_KAFKA__SASL_PASSWORD", "hunter2-secret")
    env.setenv("PIPELINE_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")  # no mechanism/user
    with pytest.raises(ConfigError) as err:
        load_worker_settings()
    assert "hunter2-secret" not in str(err.value)


def test_unknown_env_vars_are_reported_with_a_suggestion_but_service_links_are_not():
    environ = {
        "PIPELINE_DELIVERY_MODE": "exactly-once",  # typo of PIPELINE_DELIVERY
        "PIPELINE_GROUPID": "g",
        "PIPELINE_SOMETHING_ELSE": "x",
        "PIPELINE_GROUP_ID": "g",  # a real one
        "PIPELINE_SERVICE_HOST": "10.0.0.1",  # Kubernetes service links of a Service
        "PIPELINE_SERVICE_PORT": "9108",  # named "pipeline"
        "PIPELINE_SERVICE_PORT_METRICS": "9108",
        "PIPELINE_PORT": "tcp://10.0.0.1:9108",
        "PIPELINE_PORT_9108_TCP": "tcp://10.0.0.1:9108",
        "PIPELINE_PORT_9108_TCP_ADDR": "10.0.0.1",
        "OTHER_VAR": "x",
    }
    problems = unknown_env(environ, "PIPELINE_", WorkerSettings)
    assert problems == [
        "PIPELINE_DELIVERY_MODE is not a setting (did you mean PIPELINE_DELIVERY?); ignored",
        "PIPELINE_GROUPID is not a setting (did you mean PIPELINE_GROUP_ID?); ignored",
        "PIPELINE_SOMETHING_ELSE is not a setting; ignored",
    ]


def test_the_real_command_warns_about_a_typo_and_a_dotenv_typo_fails(tmp_path):
    base = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env = base | {
        "PIPELINE_DELIVERY_MODE": "exactly-once",
        "PIPELINE_PORT": "tcp://10.0.0.1:9108",
        "PIPELINE_MODEL_STORE": str(tmp_path / "empty-store"),  # exits 3 after the warnings
        "PIPELINE_METRICS_PORT": "0",
        "PIPELINE_DEVICE": "cpu",
    }
    run = run_module("pipeline", "run", env=env, cwd=tmp_path, timeout=120)
    assert run.returncode == 3, run.stderr
    assert "PIPELINE_DELIVERY_MODE is not a setting (did you mean PIPELINE_DELIVERY?)" in run.stderr
    assert "PIPELINE_PORT" not in run.stderr

    (tmp_path / ".env").write_text("PIPELINE_GROUPID=g\n")
    run = run_module("pipeline", "run", env=base, cwd=tmp_path, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "PIPELINE_GROUPID: not a setting (did you mean PIPELINE_GROUP_ID?)" in run.stderr
