"""The exactly-once sink commits a batch's offsets only under the membership it was polled in."""

import pytest
from kafka.structs import ConsumerGroupMetadata, OffsetAndMetadata, TopicPartition

from pipeline.contract.exceptions import CommitRejected
from pipeline.worker.sink import _check_generation

OFFSETS = {TopicPartition("in", 0): OffsetAndMetadata(10, "", -1)}


def member(generation: int, member_id: str = "m-1") -> ConsumerGroupMetadata:
    return ConsumerGroupMetadata("g", generation, member_id)


def test_the_same_membership_commits():
    _check_generation(member(3), member(3), OFFSETS)


@pytest.mark.parametrize(
    ("polled", "now"),
    [
        (member(3), member(4)),  # the group rebalanced during the batch
        (member(3), member(3, "m-2")),  # rejoined as another member
        (member(3), member(-1, "")),  # kafka-python reset the generation: session expired
        (member(-1, ""), member(-1, "")),  # never a member: the broker would not check -1
    ],
)
def test_another_or_no_membership_is_refused_naming_the_partitions(polled, now):
    with pytest.raises(CommitRejected, match=r"in\[0\] offset=10.*generation"):
        _check_generation(polled, now, OFFSETS)
