"""Transactional calls with a deadline (``pipeline.kafka.txn_calls``) lean on kafka-python
3.0's producer internals; these tests fail when a release moves them. The deadline itself is
exercised by the exactly-once worker tests against a real cluster."""

import inspect

import pytest
from kafka import KafkaProducer
from kafka.errors import IllegalStateError
from kafka.producer.transaction_manager import TransactionalRequestResult, TransactionManager

from pipeline.kafka import txn_calls


def test_the_producer_internals_the_deadline_relies_on_are_there():
    init = inspect.getsource(KafkaProducer.__init__)
    assert "self._transaction_manager" in init
    assert "self._sender" in init
    for method in ("begin_commit", "begin_abort", "send_offsets_to_transaction"):
        assert callable(getattr(TransactionManager, method))
    assert "timeout_ms" in inspect.signature(TransactionalRequestResult.wait).parameters
    assert isinstance(TransactionManager.last_error, property)  # txn_calls.with_last_error


def test_a_result_never_answered_times_out_instead_of_blocking():
    result = TransactionalRequestResult()
    assert result.wait(timeout_ms=50) is False  # what _bounded turns into KafkaTimeoutError


def test_a_producer_without_transactions_is_refused():
    class Plain:
        _transaction_manager = None

    with pytest.raises(IllegalStateError, match="commit_transaction needs a transactional"):
        txn_calls.commit_transaction(Plain(), 1.0)
