"""The two JVMs a local Kafka node runs: kafka-storage format (once) and the broker itself.

Why a module of its own: the command lines (classpath, logging, heap, the SCRAM users handed to
StorageTool) are the same for a single broker and for every node of a cluster, and keeping them
apart from the lifecycle keeps :mod:`pipeline.devstack.localkafka` small.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.devstack.localkafka_setup import (
    SCRAM_MECHANISMS,
    LocalKafkaError,
    ScramUser,
    redact,
    tail_lines,
)

log = logging.getLogger(__name__)

# C1-only JIT and serial GC: the JVM starts faster (a broker ~1.5 s of ~4.5 s on two cores) and
# compiles less in the background. Always for the short-lived StorageTool; for a broker only when
# asked (``fast_start``: the test suite's brokers, started and restarted dozens of times), so
# throughput measured against a default broker (bench, demo) stays representative.
FAST_START_JVM = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")


def jvm_base(state_dir: Path, libs: Path) -> list[str]:
    """Logging config, log dir and classpath shared by both JVMs of a node."""
    return [
        f"-Dlog4j2.configurationFile={state_dir / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={state_dir}",
        "-Djava.awt.headless=true",
        "-cp",
        str(libs / "*"),  # the JVM expands this classpath wildcard itself
    ]


def format_storage(
    java: str,
    libs: Path,
    state_dir: Path,
    cluster_id: str,
    scram_users: Sequence[ScramUser],
) -> None:
    """Run kafka-storage format; SCRAM users become part of the bootstrap metadata.

    Every node of a cluster is formatted with the same ``cluster_id``, or they refuse each
    other. The passwords appear on StorageTool's argv for about a second (its only interface);
    they are never logged, and its output is redacted before it can reach an error.
    """
    cmd = [java, "-Xmx256m", *FAST_START_JVM, *jvm_base(state_dir, libs), "kafka.tools.StorageTool"]
    cmd += ["format", "-t", cluster_id, "-c", str(state_dir / "server.properties")]
    for user in scram_users:
        for mechanism in SCRAM_MECHANISMS:
            cmd += ["--add-scram", f"{mechanism}=[name={user.name},password={user.password}]"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalKafkaError(
            f"kafka-storage format in {state_dir} did not run: {type(exc).__name__}"
        ) from None
    if proc.returncode != 0:
        output = redact(proc.stdout + proc.stderr, [u.password for u in scram_users])
        raise LocalKafkaError(
            f"kafka-storage format in {state_dir} failed (exit {proc.returncode}); output tail:\n"
            f"{tail_lines(output)}"
        )
    log.info("kafka.formatted state_dir=%s scram_users=%s", state_dir, len(scram_users))


def launch_broker(
    java: str, libs: Path, state_dir: Path, heap: str, version: str, *, fast_start: bool = False
) -> tuple[subprocess.Popen[bytes], int]:
    """Start the broker JVM detached (own session), stdout+stderr appended to ``kafka.log``;
    returns the process and the log offset where this launch's output begins. ``fast_start``
    adds FAST_START_JVM."""
    cmd = [java, "-Xms128m", f"-Xmx{heap}", "-XX:+ExitOnOutOfMemoryError"]
    cmd += FAST_START_JVM if fast_start else ()
    cmd += [*jvm_base(state_dir, libs), "kafka.Kafka", str(state_dir / "server.properties")]
    with (state_dir / "kafka.log").open("ab") as out:
        offset = out.tell()
        out.write(f"=== launching Kafka {version} at {time.ctime()} ===\n".encode())
        out.flush()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            cwd=state_dir, start_new_session=True,
        )  # fmt: skip
    return proc, offset
