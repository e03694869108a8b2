"""Model-only throughput of ``pipeline.contract.scoring.Scorer`` by batch size, CPU and CUDA.

    .venv/bin/python -m bench.inference_throughput                  # CPU (and CUDA if present)
    .venv/bin/python -m bench.inference_throughput --sizes 256,4096 --repeats 5
    .venv/bin/python -m bench.inference_throughput --compare-previous   # cost of the defaults

For the two model shapes of the worker benchmark (32 numeric features; a 784-value vector,
with the layer sizes the trainer picks by default), prints rows/s per batch size from 256 to
65536 on the CPU with one thread and with torch's default thread count, and on CUDA when a
GPU is present: host arrays in, scores and top features back on the host (what the worker
pays, copies included). With CUDA it also checks score parity with the CPU (largest relative
difference; the contract wants < 1e-5).

``--compare-previous`` times the default model against the default before the ensemble and
error normalisation (``previous_default``: one autoencoder, input -> pow2 (16..512) ->
quarter -> latent), interleaved, one thread, at the worker's batch sizes: microseconds of
model time per record and the ratio (the budget is 1.5x).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import msgspec
import numpy as np
import torch

from pipeline.contract.features import FeatureSpec, NumericFeature, VectorFeature
from pipeline.contract.models import ModelConfig, build_model, default_config
from pipeline.contract.scoring import Scorer, torch_threads
from pipeline.worker.codec import RecordDecoder

SIZES = [256, 1024, 4096, 16384, 65536]


def specs() -> dict[str, FeatureSpec]:
    return {
        "tab32": FeatureSpec(
            features=[NumericFeature(name=f"f{j}", mean=0.0, std=1.0) for j in range(32)]
        ),
        # the 32-feature workload with every column heavy-tailed (trainer.tails): the most the
        # asinh compression can add
        "tab32-tails": FeatureSpec(
            features=[
                NumericFeature(name=f"f{j}", mean=0.0, std=1.0, tail_scale=1.0) for j in range(32)
            ]
        ),
        "img784": FeatureSpec(
            features=[VectorFeature(name="pixels", length=784, mean=[0.5] * 784, std=[0.3] * 784)]
        ),
    }


PREVIOUS_SPEC = {"tab32-tails": "tab32"}  # the previous default compressed no column


def make_scorer(spec: FeatureSpec, device: torch.device) -> Scorer:
    torch.manual_seed(0)
    model = build_model(default_config(spec.input_dim, spec.n_units)).eval()
    return Scorer(spec, model, device, top_k=3)


def previous_default(input_dim: int) -> ModelConfig:
    """The trainer's default model before the ensemble and normalisation (one autoencoder)."""
    first = max(16, min(512, 1 << max(0, (input_dim - 1).bit_length())))
    second = max(8, first // 4)
    latent = min(max(4, min(32, input_dim // 4)), second)
    return ModelConfig(
        input_dim=input_dim, output_dim=input_dim, hidden_dims=[first, second], latent_dim=latent
    )


def compare_previous(repeats: int, sizes: list[int]) -> list[str]:
    """Markdown rows: model microseconds per record, previous vs current default, 1 thread."""
    rng = np.random.default_rng(0)
    lines = [
        "| model | batch | previous default µs/record | default µs/record | ratio |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    cpu = torch.device("cpu")
    every = specs()
    for name, spec in every.items():
        torch.manual_seed(0)
        old_spec = every[PREVIOUS_SPEC.get(name, name)]
        before = Scorer(old_spec, build_model(previous_default(spec.input_dim)).eval(), cpu)
        now = make_scorer(spec, cpu)
        for size in sizes:
            cont = rng.standard_normal((size, spec.n_continuous)).astype(np.float32)
            cat = np.zeros((size, 0), np.int64)
            old_rates, new_rates = [], []
            with torch_threads(1):
                for _ in range(repeats):  # interleaved, so load changes hit both alike
                    old_rates.append(rows_per_s(before, cont, cat, 3))
                    new_rates.append(rows_per_s(now, cont, cat, 3))
            old_us = 1e6 / statistics.median(old_rates)
            new_us = 1e6 / statistics.median(new_rates)
            lines.append(
                f"| {name} | {size:,} | {old_us:.2f} | {new_us:.2f} | {new_us / old_us:.2f}x |"
            )
    return lines


def rows_per_s(scorer: Scorer, cont: np.ndarray, cat: np.ndarray, repeats: int) -> float:
    scorer.score(cont, cat)  # warm-up (allocations, CUDA kernels, pinned buffers)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        scorer.score(cont, cat)
        times.append(time.perf_counter() - started)
    return len(cont) / statistics.median(times)


def overlap_ms(repeats: int, batch: int = 1024) -> dict[str, float]:
    """ms per batch of 784-value JSON records: decode alone, model alone (one thread), both
    one after the other, and the model in a helper thread while the next batch decodes."""
    spec = specs()["img784"]
    scorer = make_scorer(spec, torch.device("cpu"))
    rng = np.random.default_rng(1)
    values = [
        msgspec.json.encode({"pixels": r.tolist()})
        for r in rng.random((batch, 784), dtype=np.float32)
    ]
    decoder = RecordDecoder(spec)
    decoded = decoder.decode(values)
    cat = np.zeros((batch, 0), np.int64)
    pool = ThreadPoolExecutor(1)

    def overlapped() -> None:
        future = pool.submit(scorer.score, decoded.cont, cat)
        decoder.decode(values)
        future.result()

    steps = {
        "decode": lambda: decoder.decode(values),
        "model": lambda: scorer.score(decoded.cont, cat),
        "one after the other": lambda: (scorer.score(decoded.cont, cat), decoder.decode(values)),
        "overlapped": overlapped,
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    with torch_threads(1):
        for _ in range(repeats):
            for name, step in steps.items():  # interleaved
                started = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - started)
    pool.shutdown()
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=",".join(map(str, SIZES)))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--compare-previous", action="store_true", help="only the cost against the old default"
    )
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.compare_previous:
        print(f"Model time per record, 1 thread (median of {args.repeats}, interleaved); "
              f"load average {os.getloadavg()}\n")  # fmt: skip
        print("\n".join(compare_previous(args.repeats, [64, 256, 1024])))
        return 0
    rng = np.random.default_rng(0)
    targets: list[tuple[str, torch.device, int]] = [
        ("cpu, 1 thread", torch.device("cpu"), 1),
        (f"cpu, {torch.get_num_threads()} threads", torch.device("cpu"), 0),
    ]
    if torch.cuda.is_available():
        targets.append((f"cuda ({torch.cuda.get_device_name()})", torch.device("cuda"), 0))
    print(f"Rows/s by batch size (median of {args.repeats}); load average {os.getloadavg()}")
    print()
    print("| model | device | " + " | ".join(f"{s:,}" for s in sizes) + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in sizes) + " |")
    parity: dict[str, float] = {}
    for name, spec in specs().items():
        data = rng.standard_normal((max(sizes), spec.n_continuous)).astype(np.float32)
        cat = np.zeros((max(sizes), 0), np.int64)
        for label, device, threads in targets:
            scorer = make_scorer(spec, device)
            with torch_threads(threads):
                rates = [rows_per_s(scorer, data[:s], cat[:s], args.repeats) for s in sizes]
            print(f"| {name} | {label} | " + " | ".join(f"{r:,.0f}" for r in rates) + " |")
        if torch.cuda.is_available():
            cpu = make_scorer(spec, torch.device("cpu")).score(data, cat).scores
            gpu = make_scorer(spec, torch.device("cuda")).score(data, cat).scores
            parity[name] = float(np.max(np.abs(gpu - cpu) / np.maximum(np.abs(cpu), 1e-12)))
    ms = overlap_ms(args.repeats)
    print()
    print("Decode of 1024 JSON records of 784 values and the img784 model (1 thread), ms:")
    print()
    print("| " + " | ".join(ms) + " |")
    print("| " + " | ".join("---:" for _ in ms) + " |")
    print("| " + " | ".join(f"{v:.1f}" for v in ms.values()) + " |")
    if parity:
        print()
        for name, diff in parity.items():
            verdict = "ok" if diff < 1e-5 else "ABOVE 1e-5"
            print(f"CUDA vs CPU scores, {name}: largest relative difference {diff:.2e} ({verdict})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
