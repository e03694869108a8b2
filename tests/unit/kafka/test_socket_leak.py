"""Connect attempts refused while no broker listens must not leave sockets behind (real
kafka-python against a loopback port nobody listens on)."""

import gc
import os
import warnings

import pytest
from kafka.errors import KafkaTimeoutError

from pipeline.devstack.localkafka import free_ports
from pipeline.kafka.clients import new_consumer


def open_sockets() -> int:
    fds = os.listdir("/proc/self/fd")
    return sum(os.readlink(f"/proc/self/fd/{fd}").startswith("socket:") for fd in fds if _alive(fd))


def _alive(fd: str) -> bool:
    return os.path.exists(f"/proc/self/fd/{fd}")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_refused_connects_close_their_sockets() -> None:
    (port,) = free_ports(1)
    gc.collect()
    before = open_sockets()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(3):
            with pytest.raises(KafkaTimeoutError):
                new_consumer(bootstrap_servers=f"127.0.0.1:{port}", bootstrap_timeout_ms=500)
        leaked_before_gc = open_sockets() - before
        gc.collect()
    unclosed = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert (leaked_before_gc, [str(w.message) for w in unclosed]) == (0, [])
