"""The exactly-once worker's decision to replace a fenced or stalled producer, and its bound
(``pipeline.worker.recovery``): kafka-python's own error classes, a scripted clock."""

import kafka.errors as kerr
import pytest

from pipeline.contract.exceptions import (
    DeliveryError,
    KafkaFatalError,
    ScoringError,
    TransactionStalled,
)
from pipeline.worker.recovery import ProducerRecovery, rebuild_reason


def wrapped(cause: BaseException) -> DeliveryError:
    try:
        raise DeliveryError("transaction commit failed") from cause
    except DeliveryError as exc:
        return exc


@pytest.mark.parametrize(
    "cause",
    [
        kerr.ProducerFencedError(),
        kerr.InvalidProducerEpochError(),
        kerr.InvalidTxnStateError(),
        # a producer in its error state wraps the fence in args (KafkaError(msg, last_error))
        kerr.KafkaError("Cannot perform send", kerr.ProducerFencedError()),
    ],
)
def test_a_fence_anywhere_in_the_chain_calls_for_a_rebuild(cause):
    assert rebuild_reason(wrapped(cause)) == "fenced"


def test_a_stalled_call_calls_for_a_rebuild_other_failures_do_not():
    assert rebuild_reason(TransactionStalled("not committed within 10 s")) == "stalled"
    assert rebuild_reason(wrapped(kerr.KafkaTimeoutError())) is None  # a flush: retried
    assert rebuild_reason(wrapped(kerr.NotLeaderForPartitionError())) is None
    assert rebuild_reason(ScoringError("model failed")) is None
    assert rebuild_reason(wrapped(kerr.TopicAuthorizationFailedError())) is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rebuilds_are_allowed_up_to_the_bound_then_fatal_naming_the_id():
    clock = Clock()
    recovery = ProducerRecovery(lambda: "g-host-0", max_rebuilds=3, window_s=60, clock=clock)
    fence = wrapped(kerr.ProducerFencedError())
    for _ in range(3):
        recovery.allow("fenced", fence, "batch")
        clock.now += 5
    with pytest.raises(KafkaFatalError, match="'g-host-0' fenced again after 3 rebuilds"):
        recovery.allow("fenced", fence, "batch")


def test_rebuilds_older_than_the_window_no_longer_count():
    clock = Clock()
    recovery = ProducerRecovery(lambda: "t", max_rebuilds=2, window_s=60, clock=clock)
    stalled = TransactionStalled("stalled")
    for _ in range(10):  # one every 31 s: never more than 2 within 60 s
        recovery.allow("stalled", stalled, "batch")
        clock.now += 31
