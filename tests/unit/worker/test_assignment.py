"""The rebalance listener reports only partitions that really moved to another member."""

from kafka.structs import ConsumerGroupMetadata, TopicPartition

from pipeline.worker.assignment import Assignment


def tps(*ids):
    return {TopicPartition("t", i) for i in ids}


def test_eager_rebalance_revokes_all_but_only_unreturned_partitions_are_lost():
    lost: list[set] = []
    listener = Assignment(lost.append)
    listener.on_partitions_assigned(tps(0, 1, 2, 3))
    assert lost == []
    listener.on_partitions_revoked(tps(0, 1, 2, 3))  # eager: everything, before the rejoin
    assert lost == []
    listener.on_partitions_assigned(tps(0, 2))
    assert lost == [tps(1, 3)]
    assert listener.partitions == tps(0, 2)


def test_incremental_revocation_and_a_rebalance_that_changes_nothing():
    lost: list[set] = []
    listener = Assignment(lost.append)
    listener.on_partitions_assigned(tps(0, 1))
    listener.on_partitions_revoked(tps(0, 1))
    listener.on_partitions_assigned(tps(0, 1))
    assert lost == []
    listener.on_partitions_revoked(tps(1))  # cooperative style: only what moves
    listener.on_partitions_assigned(set())
    assert lost == [tps(1)]
    assert listener.partitions == tps(0)


def test_a_lost_membership_loses_every_partition_even_those_assigned_back():
    """Removed from the group (session expired): another member may have held the partitions
    meanwhile, so records collected from them must go, whatever comes back."""
    lost: list[set] = []
    listener = Assignment(lost.append)
    listener.on_partitions_assigned(tps(0, 1))
    listener.on_partitions_lost(tps(0, 1))
    assert lost == [tps(0, 1)]
    assert listener.partitions == set()
    listener.on_partitions_assigned(tps(1))
    assert lost == [tps(0, 1)]  # not reported a second time
    assert listener.partitions == tps(1)


def member(generation: int, member_id: str = "m-1") -> ConsumerGroupMetadata:
    return ConsumerGroupMetadata("g", generation, member_id)


def test_the_membership_is_the_one_the_assignment_in_force_came_with():
    """kafka-python moves the consumer's generation on when a JoinGroup is answered, before
    the new assignment is applied: a batch is committed under the assignment's membership."""
    current = [member(3)]
    listener = Assignment(lambda lost: None)
    listener.bind(lambda: current[0])
    assert listener.membership.generation_id == -1  # no assignment yet: nothing to commit under
    listener.on_partitions_assigned(tps(0, 1))
    current[0] = member(4)  # a JoinGroup answered on the network thread
    assert listener.membership == member(3)
    listener.on_partitions_revoked(tps(0, 1))
    listener.on_partitions_assigned(tps(0))
    assert listener.membership == member(4)
    listener.on_partitions_lost(tps(0))
    assert listener.membership.generation_id == -1


def test_rejoining_as_a_new_member_loses_every_partition_even_without_a_lost_callback():
    """kafka-python reports a JoinGroup refused as UNKNOWN_MEMBER_ID after the eager revoke
    only by joining again under a new member id: the assignment then counts as a new one."""
    lost: list[set] = []
    current = [member(3)]
    listener = Assignment(lost.append)
    listener.bind(lambda: current[0])
    listener.on_partitions_assigned(tps(0, 1))
    listener.on_partitions_revoked(tps(0, 1))
    current[0] = member(5, "m-2")
    listener.on_partitions_assigned(tps(0, 1))
    assert lost == [tps(0, 1)]
