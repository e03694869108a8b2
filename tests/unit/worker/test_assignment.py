"""The rebalance listener reports only partitions that really moved to another member."""

from kafka.structs import TopicPartition

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
