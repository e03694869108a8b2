"""What a worker run did, for its exit line and for tests and benchmarks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pipeline.worker.processing import BatchResult


@dataclass
class RunSummary:
    batches: int = 0
    consumed: int = 0
    scored: int = 0
    anomalies: int = 0
    rejected: int = 0
    busy_s: float = 0.0  # time spent processing and committing batches
    started_at: float = field(default_factory=time.monotonic)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_at

    def add(self, result: BatchResult, busy_s: float) -> None:
        self.batches += 1
        self.consumed += result.consumed
        self.scored += result.scored
        self.anomalies += result.anomalies
        self.rejected += result.rejected
        self.busy_s += busy_s

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "consumed": self.consumed,
            "scored": self.scored,
            "anomalies": self.anomalies,
            "rejected": self.rejected,
            "elapsed_s": round(self.elapsed_s, 3),
            "busy_s": round(self.busy_s, 3),
            "records_per_s": round(self.consumed / self.busy_s, 1) if self.busy_s else 0.0,
        }
