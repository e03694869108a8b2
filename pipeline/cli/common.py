"""What every command shares: exiting with a code and a message, and stopping on a signal."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

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
