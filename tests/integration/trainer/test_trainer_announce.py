"""Announcing a published model on a real Kafka topic."""

import pytest

from pipeline.contract.announce import decode_announcement
from pipeline.contract.artifact import latest_version
from pipeline.contract.exceptions import AnnounceError
from pipeline.kafka.settings import KafkaSettings
from tests.support.kafka import read_all
from tests.support.training import write_sensors
from trainer.fit import fit
from trainer.settings import load_trainer_settings

pytestmark = [pytest.mark.kafka, pytest.mark.usefixtures("torch_one_thread")]
QUICK = {"epochs": 1, "hidden_dims": "8", "latent_dim": 2, "id_column": "machine_id"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return str(write_sensors(tmp_path_factory.mktemp("announce"), 1000))


def test_each_publish_is_announced_keyed_by_model_name(data, tmp_path, kafka_bootstrap, make_topic):
    topic = make_topic(1)
    settings = load_trainer_settings(
        data=data,
        model_store=str(tmp_path / "store"),
        name="sensors",
        announce_topic=topic,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap),
        **QUICK,
    )
    first, second = fit(settings), fit(settings)
    records = read_all(kafka_bootstrap, topic)
    assert [r.key for r in records] == [b"sensors", b"sensors"]
    assert all(dict(r.headers)["content-type"] == b"application/json" for r in records)
    messages = [decode_announcement(r.value) for r in records]
    assert [m.version for m in messages] == [first.version, second.version]
    last = messages[-1]
    assert last.version == latest_version(tmp_path / "store", "sensors")
    assert last.threshold == second.threshold.value
    assert last.created_at == second.created_at
    assert last.path == str((tmp_path / "store" / "sensors" / second.version).resolve())


def test_env_settings_reach_the_announcer(data, tmp_path, kafka_bootstrap, make_topic, monkeypatch):
    topic = make_topic(1)
    monkeypatch.setenv("TRAINER_ANNOUNCE_TOPIC", topic)
    monkeypatch.setenv("TRAINER_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("TRAINER_KAFKA__CLIENT_ID", "trainer-test")
    manifest = fit(load_trainer_settings(data=data, model_store=str(tmp_path), **QUICK))
    (record,) = read_all(kafka_bootstrap, topic)
    assert decode_announcement(record.value).version == manifest.version


def test_an_unreachable_broker_keeps_the_published_model_and_says_so(data, tmp_path):
    settings = load_trainer_settings(
        data=data,
        model_store=str(tmp_path),
        announce_topic="models",
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9", request_timeout_ms=2000),
        **QUICK,
    )
    with pytest.raises(AnnounceError, match="could not announce") as info:
        fit(settings)
    assert latest_version(tmp_path, "default") == info.value.version
