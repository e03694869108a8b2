"""Running the project's commands as a user does: ``python -m <package> ...`` in a new process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import click

from pipeline.cli import cli as pipeline_cli
from trainer.cli import cli as trainer_cli

CLIS: dict[str, click.Command] = {"pipeline": pipeline_cli, "trainer": trainer_cli}


def run_module(
    *argv: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python -m argv[0] argv[1:]`` with this interpreter; output captured as text, the exit
    code left to the caller's assertions."""
    return subprocess.run(
        [sys.executable, "-m", *argv],
        env=None if env is None else dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_module_until(
    *argv: str,
    done: Callable[[], bool],
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``run_module`` for a command that stops on SIGTERM (drains, commits, prints its
    summary: the worker, the alert sink): stopped so once ``done()`` holds (e.g. its group
    committed the whole topic) instead of waiting out an idle timeout, which proves nothing.
    A command that ends on its own first (an error) is returned as it ended; ``done`` never
    holding within ``timeout`` fails the test."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *argv],
        env=None if env is None else dict(env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and not done():
            assert time.monotonic() < deadline, f"{argv[:3]}: not done after {timeout}s"
            time.sleep(0.1)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def check_command_line(argv: Sequence[str], parse_args: bool = True) -> click.Command:
    """Resolve ``python -m <pkg> <group...> <command> args`` to the click command it runs and
    parse its arguments (without running it): an unknown command or option, or a missing
    required one, raises. Used on the command lines of the docs, compose and Kubernetes;
    ``parse_args=False`` only checks that the command exists (a name mentioned in prose)."""
    assert list(argv[:2]) == ["python", "-m"], argv
    command = CLIS[argv[2]]
    args = list(argv[3:])
    while isinstance(command, click.Group):
        if not args and not parse_args:
            return command
        assert args, f"{argv}: names a group, not a command"
        name = args.pop(0)
        sub = command.get_command(click.Context(command), name)
        assert sub is not None, f"{argv}: {command.name} has no command {name!r}"
        command = sub
    if parse_args:
        command.make_context(command.name, args)
    return command
