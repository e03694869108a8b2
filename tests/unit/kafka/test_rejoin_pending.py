"""The wrap that keeps a consumer's rebalance pending until it finished
(``pipeline.kafka.rejoin_pending``), against the real kafka-python classes: these tests fail
when a release changes the pieces it relies on. The stall itself is reproduced against a real
broker in tests/integration/kafka/test_rejoin_pending.py."""

import inspect

from kafka.coordinator.base import BaseCoordinator
from kafka.coordinator.consumer import ConsumerCoordinator

from pipeline.kafka.rejoin_pending import keep_rejoins_pending


def test_the_rejoining_flag_spans_the_join_as_the_wrap_assumes() -> None:
    """Raised before the JoinGroup, lowered where the join's result is applied."""
    source = inspect.getsource(BaseCoordinator.join_group_async)
    raised = source.index("self.rejoining = True")
    lowered = source.index("self.rejoining = False")
    assert raised < source.index("_do_join_and_sync_async") < lowered
    assert lowered < source.index("_on_join_complete_async")


def test_the_metadata_path_still_leaves_the_rejoin_flag_down() -> None:
    """The premise: if a release raises the flag for a metadata change, the wrap can go."""
    source = inspect.getsource(ConsumerCoordinator.need_rejoin)
    assert "self._assignment_snapshot != self._metadata_snapshot" in source
    assert "request_rejoin" not in source


def test_installing_twice_wraps_once() -> None:
    keep_rejoins_pending()
    wrapped = ConsumerCoordinator.need_rejoin
    keep_rejoins_pending()
    assert ConsumerCoordinator.need_rejoin is wrapped
    original = wrapped.__wrapped__
    assert not hasattr(original, "__wrapped__")  # kafka-python's own, wrapped once
