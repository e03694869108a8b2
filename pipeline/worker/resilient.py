"""Scoring that survives a CUDA out-of-memory error without losing or reordering records.

A batch that does not fit on the GPU is split in halves and each half retried, recursively,
down to ``min_rows``; the scores are concatenated back in input order. The size that fitted
becomes a cap for later batches (so one OOM does not cost a failed attempt per batch) and is
doubled again after ``regrow_after`` batches without an OOM, because memory pressure from other
processes comes and goes. If even ``min_rows`` rows do not fit, the rest of the batch is
scored by a CPU copy of the model (built on first use) and the next batch tries the GPU again.

Any other failure of the model becomes a :class:`~pipeline.contract.exceptions.ScoringError` naming
the batch size, so the worker's retry policy handles it like every other batch failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import torch

from pipeline.contract.exceptions import ScoringError
from pipeline.contract.features import FeatureSpec, FloatArray, IndexArray
from pipeline.contract.scoring import BatchScores, Scorer, concat_scores

log = logging.getLogger(__name__)

OomAction = Literal["split", "cpu_fallback"]
OomHook = Callable[[OomAction, int], None]


class ResilientScorer:
    """Wraps a :class:`Scorer`; ``score`` has the same contract and never drops a row."""

    def __init__(
        self,
        primary: Scorer,
        make_cpu_scorer: Callable[[], Scorer],
        *,
        min_rows: int = 1,
        regrow_after: int = 256,
        on_oom: OomHook | None = None,
    ) -> None:
        self.primary = primary
        self._make_cpu_scorer = make_cpu_scorer
        self._cpu: Scorer | None = None
        self.min_rows = max(1, min_rows)
        self.regrow_after = regrow_after
        self.on_oom = on_oom
        self.limit: int | None = None  # most rows per forward pass since the last OOM
        self._clean_batches = 0
        self.ooms = 0  # out-of-memory errors seen (each one split or fell back)
        self._cpu_rest = False  # set while the rest of the current batch goes to the CPU

    @property
    def spec(self) -> FeatureSpec:
        return self.primary.spec

    @property
    def device(self) -> torch.device:
        return self.primary.device

    @property
    def top_k(self) -> int:
        return self.primary.top_k

    def score(self, cont: FloatArray, cat: IndexArray) -> BatchScores:
        """Score (B, C) and (B, K) raw arrays; rows come back in input order."""
        n = int(cont.shape[0])
        if n == 0:
            return self._guarded(self.primary, cont, cat)
        self._cpu_rest = False
        ooms_before = self.ooms
        step = self.limit or n
        parts: list[BatchScores] = []
        for start in range(0, n, step):
            parts.extend(self._score_chunk(cont[start : start + step], cat[start : start + step]))
        self._maybe_regrow(oom_happened=self.ooms != ooms_before)
        return parts[0] if len(parts) == 1 else concat_scores(parts)

    # ------------------------------------------------------------------ internals
    def _score_chunk(self, cont: FloatArray, cat: IndexArray) -> list[BatchScores]:
        if self._cpu_rest:
            return [self._guarded(self._cpu_scorer(), cont, cat)]
        n = int(cont.shape[0])
        try:
            return [self._guarded(self.primary, cont, cat)]
        except torch.cuda.OutOfMemoryError as exc:
            self.ooms += 1
            _release_cuda_cache()
            if n <= self.min_rows:
                log.warning(
                    "out of memory even for the smallest chunk, scoring on the CPU",
                    extra={"rows": n, "device": str(self.primary.device), "error": str(exc)},
                )
                self._cpu_rest = True
                self.limit = None  # the GPU is short of memory, not our batch: retry it whole
                self._report("cpu_fallback", n)
                return [self._guarded(self._cpu_scorer(), cont, cat)]
            half = (n + 1) // 2
            self.limit = min(self.limit or half, half)
            log.warning(
                "out of memory, splitting the batch",
                extra={"rows": n, "into": half, "device": str(self.primary.device)},
            )
            self._report("split", n)
            return self._score_chunk(cont[:half], cat[:half]) + self._score_chunk(
                cont[half:], cat[half:]
            )

    def _guarded(self, scorer: Scorer, cont: FloatArray, cat: IndexArray) -> BatchScores:
        """Run one scorer; OOM passes through (handled above), other errors get context."""
        try:
            return scorer.score(cont, cat)
        except torch.cuda.OutOfMemoryError:
            raise
        except (RuntimeError, ValueError, IndexError) as exc:
            raise ScoringError(
                f"model failed on {cont.shape[0]} rows on {scorer.device}: {exc}"
            ) from exc

    def _cpu_scorer(self) -> Scorer:
        if self._cpu is None:
            self._cpu = self._make_cpu_scorer()
        return self._cpu

    def _maybe_regrow(self, oom_happened: bool) -> None:
        if oom_happened or self.limit is None:
            self._clean_batches = 0
            return
        self._clean_batches += 1
        if self._clean_batches >= self.regrow_after:
            self.limit *= 2
            self._clean_batches = 0

    def _report(self, action: OomAction, rows: int) -> None:
        if self.on_oom is not None:
            self.on_oom(action, rows)


def _release_cuda_cache() -> None:
    """Give cached blocks back so the smaller retry has a chance (no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
