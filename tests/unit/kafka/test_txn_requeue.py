"""The wrap that keeps kafka-python's sender from dropping a transactional request whose
coordinator cannot be reached (``pipeline.kafka.txn_requeue``), against the real kafka-python
classes: these tests fail when a release changes the pieces it relies on. The defect itself is
reproduced against a real cluster in tests/integration/cluster/test_cluster_transactions.py."""

import inspect

import pytest
from kafka.errors import KafkaError
from kafka.net.compat import KafkaNetClient
from kafka.producer.sender import Sender

from pipeline.devstack.localkafka import free_ports
from pipeline.kafka.txn_requeue import ReadyAsBool, requeue_unreachable_coordinator_requests


@pytest.fixture
def unreachable_client():
    (port,) = free_ports(1)
    client = KafkaNetClient(bootstrap_servers=[f"127.0.0.1:{port}"])
    try:
        yield client
    finally:
        client.close()
        client._net.stop(timeout_ms=2000)


def test_kafka_pythons_await_ready_raises_where_the_sender_expects_false(unreachable_client):
    """The premise of the wrap: if a release makes await_ready return False, the wrap can go."""
    with pytest.raises(KafkaError):
        unreachable_client.await_ready(0, timeout_ms=200)
    source = inspect.getsource(Sender._maybe_send_pending_request)
    assert "not self._client.await_ready(" in source


def test_the_senders_view_answers_false_and_passes_everything_else_through(unreachable_client):
    view = ReadyAsBool(unreachable_client)
    assert view.await_ready(0, timeout_ms=200) is False
    assert view.in_flight_request_count() == 0  # delegated to the real client


def test_the_wrap_is_installed_once_and_gives_senders_the_view(unreachable_client):
    requeue_unreachable_coordinator_requests()
    installed = Sender.__init__
    requeue_unreachable_coordinator_requests()
    assert Sender.__init__ is installed
    sender = Sender(unreachable_client, unreachable_client.cluster, accumulator=None)
    assert isinstance(sender._client, ReadyAsBool)
    assert sender._client.await_ready(0, timeout_ms=200) is False
