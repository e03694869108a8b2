"""Multi-process training with torchrun: who am I, and the few collectives the trainer needs.

``torchrun --nproc-per-node N -m trainer fit ...`` starts N copies of the trainer with
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set; each joins one process group (NCCL on CUDA, gloo on
CPU), reads its own shard of rows, and trains one replica of the model under
DistributedDataParallel. Without those variables everything here is a no-op for one process,
so the single-process path runs the same code.

Collectives are made symmetric on purpose: a rank that fails in a phase tells the others
(``agree``), so nobody waits forever in the next collective for a peer that has died.
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from pipeline.contract.exceptions import ConfigError, DataError, PipelineError

log = logging.getLogger(__name__)
T = TypeVar("T")
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(v) for v in t.cpu().tolist()]

    def all_min(self, value: int) -> int:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank (pickled by torch; only our
        own statistics and arrays travel this way, never data from outside)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: T | None) -> T:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            assert obj is not None
            return obj
        box: list[Any] = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[no-any-return]

    def agree(self, error: PipelineError | None) -> None:
        """Raise on every rank if any rank failed (the first failing rank's error)."""
        if not self.enabled:
            if error is not None:
                raise error
            return
        failures = [e for e in self.gather(None if error is None else _describe(error)) if e]
        if error is not None:
            raise error
        if failures:
            kind, message = failures[0]
            raise (ConfigError if kind == "config" else DataError)(f"another rank: {message}")

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def _device(self) -> torch.device:
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def _describe(error: PipelineError) -> tuple[str, str]:
    return ("config" if isinstance(error, ConfigError) else "data", str(error))


def init_distributed(device_choice: str) -> Dist:
    """Join the torchrun process group when launched by torchrun, else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_choice != "cpu" and torch.cuda.is_available()
    if device_choice.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device_choice!r} but no CUDA device is available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=TIMEOUT)
    log.info("joined process group", extra={"rank": rank, "world_size": world})
    return Dist(rank=rank, world=world, local_rank=local_rank)


def device_for(d: Dist, device: torch.device) -> torch.device:
    """The CUDA device of this local rank, or ``device`` unchanged."""
    if d.enabled and device.type == "cuda":
        return torch.device("cuda", d.local_rank)
    return device


def shutdown(d: Dist) -> None:
    """Tear the group down while the interpreter is fully alive.

    DistributedDataParallel's reducer and gloo's finished work objects can sit in reference
    cycles that only die at interpreter exit; gloo's C++ threads then release tensors without
    a live interpreter and the process aborts ("terminate called without an active
    exception", exit -6, ~1 run in 6 under load here). Collect them first.
    """
    if d.enabled and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
        gc.collect()
