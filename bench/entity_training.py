"""Fitting 1,000 entity models: one batched fit against a loop of separate fits.

    .venv/bin/python -m bench.entity_training                 # 1,000 machines, 800 rows each
    .venv/bin/python -m bench.entity_training --entities 200 --loop-sample 10

The fleet data of ``pipeline.devstack.fleet`` (13 model inputs), the trainer's default
per-entity settings. ``batched`` is ``trainer.entity_loop.fit_stacked`` on every entity at
once, as ``trainer fit --entity-column`` runs it; ``loop`` is the same function called for
one entity at a time (the same code, hyper-parameters and early stopping: only the batching
differs), timed on ``--loop-sample`` entities and scaled to all of them. Rows/s counts the
fitting rows the optimiser stepped through (entities x steps x entity batch size). The
fallback (an ordinary fit on every row) is not included; ``--full`` also times the whole
``trainer fit`` command.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from pipeline.devstack.fleet import fleet_frame
from trainer.distributed import Dist
from trainer.entity_data import read_entity_rows
from trainer.entity_loop import fit_stacked
from trainer.fit import fit, model_config, prepare, split_options
from trainer.settings import load_trainer_settings
from trainer.split import plan_split


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entities", type=int, default=1000)
    p.add_argument("--rows-per-entity", type=int, default=800)
    p.add_argument("--loop-sample", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--full", action="store_true", help="also time the whole trainer fit")
    p.add_argument("--set", action="append", default=[], help="trainer setting key=value")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="bench-entity-training-") as tmp:
        data = Path(tmp) / "fleet.parquet"
        fleet_frame(args.entities * args.rows_per_entity, args.entities, seed=1).to_parquet(data)
        s = load_trainer_settings(
            data=str(data),
            model_store=str(Path(tmp) / "store"),
            name="fleet",
            id_column="reading_id",
            entity_column="machine_id",
            device="cpu",
            progress="log",
            **dict(kv.split("=", 1) for kv in args.set),
        )
        prepared = prepare(s, Dist())
        config = model_config(prepared.spec, s)
        split = plan_split(prepared.source, split_options(s))
        rows = read_entity_rows(prepared.source, prepared.spec, "machine_id", split=split)
        members = list(range(len(rows.keys)))
        device = torch.device("cpu")
        log(f"{len(rows):,} rows, {len(members)} entities, model {config.hidden_dims}")
        batched = fit_stacked(config, prepared.spec, rows, members, s, device)
        log(f"batched: {batched.seconds:.1f} s, {batched.epochs} epochs")
        started = time.perf_counter()
        loop_rows = 0
        for m in members[: args.loop_sample]:
            loop_rows += fit_stacked(config, prepared.spec, rows, [m], s, device).rows_seen
        loop_s = time.perf_counter() - started
        sample = min(args.loop_sample, len(members))
        scaled = loop_s * len(members) / sample
        full_s = None
        if args.full:
            started = time.perf_counter()
            fit(s)
            full_s = time.perf_counter() - started
    print(
        f"Fitting {len(members):,} entity models ({len(rows):,} rows, inputs "
        f"{config.input_dim}, layers {config.hidden_dims} / {config.latent_dim}), "
        f"{args.threads} CPU threads\n"
    )
    print("| fit | seconds | rows/s | epochs |")
    print("| --- | ---: | ---: | ---: |")
    print(
        f"| batched (one stacked model) | {batched.seconds:,.1f} | {batched.rows_per_s:,.0f} "
        f"| {batched.epochs} |"
    )
    print(
        f"| loop of separate fits (measured on {sample}, scaled) | {scaled:,.1f} "
        f"| {loop_rows / loop_s:,.0f} | - |"
    )
    print(f"\nbatched is {scaled / batched.seconds:.1f}x faster than the loop")
    if full_s is not None:
        print(f"whole `trainer fit --entity-column` (fallback included): {full_s:,.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
