import threading
from dataclasses import dataclass

from kafka.structs import TopicPartition

from pipeline.worker.overlap import PrefetchingSource


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int


class ScriptedConsumer:
    """Returns scripted poll results in order; a fake of the poll/assignment surface only."""

    def __init__(self, polls, assigned):
        self.polls = list(polls)
        self.assigned = set(assigned)
        self.calls = []

    def poll(self, timeout_ms=0, max_records=None):
        self.calls.append((timeout_ms, max_records))
        return self.polls.pop(0) if self.polls else {}

    def assignment(self):
        return self.assigned


def recs(partition, *offsets):
    return [Rec("t", partition, o) for o in offsets]


def test_prefetch_buffers_until_done_and_serves_the_buffer_first():
    tp0, tp1 = TopicPartition("t", 0), TopicPartition("t", 1)
    consumer = ScriptedConsumer(
        [{tp0: recs(0, 1, 2)}, {tp1: recs(1, 7)}, {tp0: recs(0, 3)}], [tp0, tp1]
    )
    source = PrefetchingSource(consumer, max_buffered=10)
    calls = iter([False, False, True])
    source.prefetch(lambda: next(calls))
    assert len(source) == 3 and source.prefetched == 3
    assert [r.offset for r in source.poll(timeout_ms=500, max_records=2)[None]] == [1, 2]
    assert [r.offset for r in source.poll(timeout_ms=500, max_records=2)[None]] == [7]
    assert [r.offset for r in next(iter(source.poll(500, 5).values()))] == [3]  # consumer again
    assert consumer.calls[-1] == (500, 5)


def test_prefetch_stops_when_the_buffer_is_full_and_drops_revoked_partitions():
    tp0, tp1 = TopicPartition("t", 0), TopicPartition("t", 1)
    consumer = ScriptedConsumer([{tp0: recs(0, 1, 2)}, {tp1: recs(1, 5, 6)}], [tp0, tp1])
    source = PrefetchingSource(consumer, max_buffered=4)
    source.prefetch(lambda: False)  # ends because the buffer is full, not because done
    assert len(source) == 4 and consumer.calls[1][1] == 2  # asked only for what fits
    consumer.assigned = {tp1}  # partition 0 revoked in a rebalance
    assert [r.offset for r in source.poll(0, 10)[None]] == [5, 6]


def test_drain_returns_the_buffer_for_a_rewind():
    tp0 = TopicPartition("t", 0)
    source = PrefetchingSource(ScriptedConsumer([{tp0: recs(0, 4, 5)}], [tp0]), max_buffered=8)
    done = threading.Event()
    source.prefetch(lambda: done.is_set() or len(source) > 0)
    assert [r.offset for r in source.drain()] == [4, 5]
    assert len(source) == 0
