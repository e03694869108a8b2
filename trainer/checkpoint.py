"""Training checkpoints: resume a killed run and end exactly where an uninterrupted one ends.

After every epoch each process writes ``<dir>/checkpoint-rank<R>.pt``: model, optimizer,
scheduler and loss-scaler state, the best weights so far, early-stopping counters, losses,
and the torch RNG states (CPU and CUDA; dropout, DAE noise and VAE sampling draw from them).
Data order needs no saved state: an epoch's shuffle is seeded by (seed, epoch, rank).

A checkpoint carries a fingerprint of everything that shapes training (settings except
``epochs``, the feature spec, the data files and their row counts, the number of processes);
resuming with anything different is refused instead of silently mixing two runs. Files are
written to a temporary name and renamed, so a kill mid-write leaves the previous checkpoint.

The file is a ``torch.save`` archive loaded with ``weights_only=True``: tensors, numbers,
strings and containers only, never arbitrary pickled objects. A run that publishes removes its
checkpoint.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

import torch

from pipeline.contract.exceptions import ConfigError

log = logging.getLogger(__name__)
FORMAT = 1


class Checkpointer:
    """Saves and loads this rank's checkpoint in ``directory``."""

    def __init__(self, directory: str | Path, rank: int, fingerprint: str) -> None:
        self.directory = Path(directory)
        self.path = self.directory / f"checkpoint-rank{rank}.pt"
        self.fingerprint = fingerprint

    def load(self) -> dict[str, Any] | None:
        """The saved state, None when there is none; ConfigError when it is from another run."""
        if not self.path.exists():
            return None
        try:
            state: dict[str, Any] = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds for a corrupt or foreign file
            raise ConfigError(f"cannot read checkpoint {self.path}: {exc}") from exc
        if state.get("format") != FORMAT:
            raise ConfigError(f"{self.path}: unknown checkpoint format {state.get('format')!r}")
        if state.get("fingerprint") != self.fingerprint:
            raise ConfigError(
                f"{self.path} was written by a run with other data or settings; resume with "
                "the same ones, or use another TRAINER_CHECKPOINT_DIR (or delete this file)"
            )
        log.info("resuming", extra={"checkpoint": str(self.path), "epoch": state["epoch"]})
        return state

    def save(self, state: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = {**state, "format": FORMAT, "fingerprint": self.fingerprint}
        tmp = self.directory / f".{self.path.name}.{uuid.uuid4().hex}"
        try:
            with tmp.open("wb") as fh:
                torch.save(payload, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    """The global torch RNG states (CPU, and every CUDA device when present)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
