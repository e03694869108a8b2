"""Which kafka-python errors stop the worker at once and which are retried batch-wise."""

import kafka.errors as kerr
import pytest

from pipeline.contract.exceptions import DeliveryError, KafkaFatalError, KafkaIOError
from pipeline.kafka.errors import fatal_reason, is_fatal


def wrapped(error: BaseException) -> DeliveryError:
    try:
        try:
            raise error
        except kerr.KafkaError as exc:
            raise DeliveryError("transaction commit failed") from exc
    except DeliveryError as outer:
        return outer


@pytest.mark.parametrize(
    "error",
    [
        kerr.TopicAuthorizationFailedError(),
        kerr.GroupAuthorizationFailedError(),
        kerr.TransactionalIdAuthorizationFailedError(),
        kerr.ClusterAuthorizationFailedError(),
        kerr.SaslAuthenticationFailedError(),
        kerr.ProducerFencedError(),
        kerr.UnsupportedVersionError(),
        kerr.InvalidTopicError(),
        kerr.KafkaConfigurationError("bad"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_fatal_errors_are_recognised_directly_and_through_our_wrappers(error):
    assert is_fatal(error)
    assert is_fatal(wrapped(error))
    assert fatal_reason(wrapped(error)) == type(error).__name__


def test_a_producer_in_error_state_carries_the_fatal_cause_in_its_args():
    refused = kerr.KafkaError(
        "Cannot perform send because at least one previous transactional or"
        " idempotent request has failed with errors.",
        kerr.ProducerFencedError(),
    )
    assert not is_fatal(DeliveryError(f"send failed: {refused!r}"))  # text alone is no cause
    assert is_fatal(wrapped(refused))
    assert is_fatal(KafkaFatalError("already classified"))


@pytest.mark.parametrize(
    "error",
    [
        kerr.KafkaTimeoutError("Unable to bootstrap"),
        kerr.KafkaConnectionError(),
        kerr.NotLeaderForPartitionError(),
        kerr.RequestTimedOutError(),
        kerr.MessageSizeTooLargeError(),  # an operator can raise the topic's limit
        kerr.CommitFailedError(),
        kerr.UnknownError("Future not done"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_everything_else_is_retried(error):
    assert not is_fatal(error)
    assert not is_fatal(wrapped(error))
    assert not is_fatal(KafkaIOError("offset commit failed"))
