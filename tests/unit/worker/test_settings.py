import logging

import pytest

from pipeline.contract.exceptions import ConfigError
from pipeline.worker.settings import load_worker_settings
from trainer.settings import load_trainer_settings


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no stray .env
    for key in list(__import__("os").environ):
        if key.startswith(("PIPELINE_", "TRAINER_")):
            monkeypatch.delenv(key)
    return monkeypatch


def test_documented_env_names_reach_the_settings(env):
    env.setenv("PIPELINE_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    env.setenv("PIPELINE_INPUT_TOPIC", "a, b")
    env.setenv("PIPELINE_ALERT_TOPIC", "alerts")
    env.setenv("PIPELINE_DLQ_TOPIC", "dlq")
    env.setenv("PIPELINE_GROUP_ID", "g")
    env.setenv("PIPELINE_MODEL_STORE", "/models")
    env.setenv("PIPELINE_MODEL_NAME", "fraud")
    env.setenv("PIPELINE_BATCH__MAX_SIZE", "256")
    env.setenv("PIPELINE_BATCH__MAX_WAIT_MS", "20")
    env.setenv("PIPELINE_SCORES_TOPIC", "scores")
    env.setenv("PIPELINE_ID_FIELD", "txn_id")
    env.setenv("PIPELINE_DEVICE", "cpu")
    env.setenv("PIPELINE_METRICS_PORT", "9200")
    s = load_worker_settings()
    assert s.kafka.client_kwargs()["bootstrap_servers"] == ["k1:9092", "k2:9092"]
    assert s.input_topics == ["a", "b"]
    assert (s.alert_topic, s.dlq_topic, s.scores_topic, s.group_id) == (
        "alerts",
        "dlq",
        "scores",
        "g",
    )
    assert (s.model_store, s.model_name, s.id_field, s.device) == (
        "/models",
        "fraud",
        "txn_id",
        "cpu",
    )
    assert (s.batch.max_size, s.batch.max_wait_ms, s.metrics_port) == (256, 20, 9200)


def test_dotenv_file_is_read(env, tmp_path):
    (tmp_path / ".env").write_text("PIPELINE_GROUP_ID=from-dotenv\n")
    assert load_worker_settings().group_id == "from-dotenv"


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("PIPELINE_BATCH__MAX_SIZE", "0", "PIPELINE_BATCH__MAX_SIZE"),
        ("PIPELINE_BATCH__MAX_WAIT_MS", "soon", "PIPELINE_BATCH__MAX_WAIT_MS"),
        ("PIPELINE_DEVICE", "tpu", "PIPELINE_DEVICE"),
        ("PIPELINE_METRICS_PORT", "70000", "PIPELINE_METRICS_PORT"),
        ("PIPELINE_KAFKA__SECURITY_PROTOCOL", "SASL_SSL", "PIPELINE_KAFKA"),
        ("PIPELINE_DELIVERY", "at-most-once", "PIPELINE_DELIVERY"),
    ],
)
def test_bad_values_fail_at_start_naming_the_env_var(env, key, value, named):
    env.setenv(key, value)
    with pytest.raises(ConfigError, match=named):
        load_worker_settings()


def test_sasl_password_never_appears_in_reprs_errors_or_logs(env, caplog):
    env.setenv("PIPELINE_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    env.setenv("PIPELINE_KAFKA__SASL_MECHANISM", "SCRAM-SHA-256")
    env.setenv("PIPELINE_KAFKA__SASL_USERNAME", "alice")
    env.setenv("PIPELINE_KAFKA__SASL_PASSWORD", "s3cret-pw")
    s = load_worker_settings()
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("settings", extra={"settings": s})
    assert "s3cret-pw" not in repr(s) and "s3cret-pw" not in caplog.text
    assert s.kafka.client_kwargs()["sasl_plain_password"] == "s3cret-pw"
    env.setenv("PIPELINE_BATCH__MAX_SIZE", "-1")
    env.delenv("PIPELINE_KAFKA__SASL_USERNAME")
    with pytest.raises(ConfigError) as err:
        load_worker_settings()
    assert "s3cret-pw" not in str(err.value)


def test_trainer_settings_from_env_and_overrides(env):
    env.setenv("TRAINER_HIDDEN_DIMS", "32,16")
    env.setenv("TRAINER_IGNORE_COLUMNS", "a, b")
    env.setenv("TRAINER_EPOCHS", "7")
    s = load_trainer_settings(epochs=3, data="x.parquet")
    assert s.hidden_dims == [32, 16] and s.ignore_columns == ["a", "b"]
    assert s.epochs == 3 and s.data == "x.parquet"
    with pytest.raises(ConfigError, match="TRAINER_QUANTILE"):
        load_trainer_settings(quantile=1.5)
    env.setenv("TRAINER_HIDDEN_DIMS", "32,x")
    with pytest.raises(ConfigError, match="TRAINER_HIDDEN_DIMS"):
        load_trainer_settings()
