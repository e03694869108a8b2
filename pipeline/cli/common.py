"""What every command shares: exiting with a code and a message, and stopping on a signal."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click

log = logging.getLogger("pipeline")


def install_signal_handlers(stop: Callable[[], None]) -> None:
    """First SIGTERM/SIGINT drains and stops; a second SIGINT kills at once."""

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def fail(code: int, message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


EXIT_NOT_RUNNING = 3  # LSB convention for `status` of a stopped service


def state_dir_option(envvar: str, what: str, default: str) -> Callable[[Any], Any]:
    """``--state-dir`` of a local service command group (Kafka, S3): where it keeps its state."""
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar=envvar,
        default=None,
        help=f"{what} state directory [env {envvar}; default {default}].",
    )
