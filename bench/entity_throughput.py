"""Worker throughput with per-entity models against the single-model worker, same run.

    .venv/bin/python -m bench.entity_throughput               # starts its own local broker
    .venv/bin/python -m bench.entity_throughput --runs 5 --records 100000

The ``json32`` workload of ``bench.worker_throughput`` (JSON objects, 32 numeric features and
an id) plus a ``machine`` field. Each variant reads its own pre-filled 3-partition topic with
``pipeline.worker.loop.Worker`` as deployed (batches of at most 1,024, alerts produced, offsets
committed), timed from the first record to the last; variants are interleaved within each
run (order reversed every other run), median of the runs:

- ``single``: one model (the layer sizes ``trainer fit`` picks for 32 inputs);
- ``entities=N``: a per-entity version of N models of that architecture plus the fallback,
  records spread over the N machines (and 1 in 20 naming an unknown one, for the fallback);
- ``entities=10000, LRU``: the same 10,000 models with a memory budget of a quarter of their
  weights, so models are loaded and evicted on demand while streaming.

A second table times the model call alone (no Kafka): ``Scorer.score`` against
``EntityScorer.score`` on 1,024-row batches, for the same entity counts.

Models are untrained (random weights of the trainer's initialisation): throughput does not
depend on what the weights are. Thresholds sit at the 99th percentile of the scores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import torch

from bench.worker_throughput import (
    Workload,
    broker,
    create_topic,
    fill,
    make_workloads,
    publish_model,
    run_worker,
    worker_settings,
)
from pipeline.contract.artifact import ThresholdInfo, TrainingSummary, load_artifact
from pipeline.contract.entities import EntityIndex
from pipeline.contract.entity_publish import publish_entities, relative_quantiles
from pipeline.contract.entity_scoring import open_entity_scorer
from pipeline.contract.models import default_config
from pipeline.contract.scoring import Scorer
from pipeline.contract.stacked import StackedAutoEncoder, params_per_model
from pipeline.kafka.settings import KafkaSettings
from pipeline.worker.codec import RecordDecoder

COUNTS = (1, 100, 10_000)
UNKNOWN_EVERY = 20  # one record in 20 names a machine without a model


def machine_workload(base: Workload, entities: int) -> Workload:
    """json32 values with a ``machine`` field; record i names machine i mod N (cycling)."""
    rows = [msgspec.json.decode(v) for v in base.values]
    n = max(len(rows), entities)
    values = []
    for i in range(n):
        rec = dict(rows[i % len(rows)])
        rec["machine"] = "unknown" if i % UNKNOWN_EVERY == 0 else f"m{i % entities}"
        values.append(msgspec.json.encode(rec))
    return Workload(f"entities={entities}", base.spec, values, binary=False)


def publish_entity_models(store: Path, name: str, w: Workload, entities: int) -> int:
    """Publish N untrained models + fallback; returns the bytes of their weights."""
    spec = w.spec
    config = default_config(spec.input_dim, members=1, normalize=False)  # entity models
    torch.manual_seed(0)
    model = StackedAutoEncoder(config, entities + 1).eval()
    index = EntityIndex(
        column="machine",
        entities=[None, *(f"m{i}" for i in range(entities))],
        thresholds=[1.0] * (entities + 1),
        calibration_rows=[0] * (entities + 1),
        train_rows=[0] * (entities + 1),
        fitted_in=["bench"] * (entities + 1),
    )
    fields = {
        "name": name,
        "model": config,
        "features": spec,
        "threshold": ThresholdInfo(value=1.0, quantile=0.99, rows=1),
        "score_quantiles": {"0.99": 1.0},
        "training": TrainingSummary(rows_train=0, rows_validation=0, epochs=0, best_epoch=0),
    }
    entity_fields = {"min_rows": 1, "relative_score_quantiles": {"0.99": 1.0}, "fitted": 0}
    version = publish_entities(str(store), model, index, fields, entity_fields).version
    # thresholds at the 99th percentile of the workload's scores, so ~1% of records alert
    loaded = load_artifact(store, name, version)
    assert loaded.entities is not None
    decoded = RecordDecoder(spec, id_field="id", entity_field="machine").decode(w.values[:4000])
    scorer = open_entity_scorer(spec, loaded.entities, torch.device("cpu"))
    scores = scorer.score(decoded.cont, decoded.cat, decoded.entities or []).scores.scores
    q99 = float(np.quantile(scores, 0.99))
    index = index.model_copy(update={"thresholds": [q99] * (entities + 1)})
    fields["threshold"] = ThresholdInfo(value=q99, quantile=0.99, rows=len(scores))
    entity_fields["relative_score_quantiles"] = relative_quantiles(scores / q99)
    publish_entities(str(store), model, index, fields, entity_fields)
    return params_per_model(config) * 4 * (entities + 1)


def model_call_table(
    base: Workload, runs: int, counts: tuple[int, ...] = COUNTS
) -> dict[str, float]:
    """Rows/s of the model call alone on 1,024-row batches (no Kafka), median of ``runs``."""
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-entity-model-") as tmp:
        store = Path(tmp)
        publish_model(store, "single", base)
        single = load_artifact(store, "single")
        scorer = Scorer(base.spec, single.model, torch.device("cpu"))
        decoded = RecordDecoder(base.spec, id_field="id").decode(base.values[:1024])
        out["single"] = _rate(lambda: scorer.score(decoded.cont, decoded.cat), runs)
        for n in counts:
            w = machine_workload(base, n)
            publish_entity_models(store, f"e{n}", w, n)
            loaded = load_artifact(store, f"e{n}")
            assert loaded.entities is not None
            routed = open_entity_scorer(base.spec, loaded.entities, torch.device("cpu"))
            dec = RecordDecoder(base.spec, id_field="id", entity_field="machine")
            batches = [dec.decode(w.values[i : i + 1024]) for i in range(0, len(w.values), 1024)]
            for b in batches:  # warm: every model resident
                routed.score(b.cont, b.cat, b.entities or [])
            d = batches[0]
            out[f"entities={n}"] = _rate(
                lambda r=routed, d=d: r.score(d.cont, d.cat, d.entities or []), runs
            )
    return out


def _rate(call: Any, runs: int, reps: int = 50) -> float:
    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(reps):
            call()
        rates.append(1024 * reps / (time.perf_counter() - started))
    return statistics.median(rates)


def run_bench(
    bootstrap: str, records: int, runs: int, log: Any, counts: tuple[int, ...] = COUNTS
) -> dict[str, list[float]]:
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    base = make_workloads()["json32"]
    rates: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-entity-store-") as tmp:
        store = Path(tmp)
        variants: dict[str, tuple[str, dict[str, Any]]] = {}
        topic = create_topic(bootstrap, f"single-{uuid.uuid4().hex[:8]}")
        publish_model(store, "single", base)
        fill(bootstrap, topic, base, records)
        variants["single"] = (topic, {})
        for n in counts:
            w = machine_workload(base, n)
            weights = publish_entity_models(store, f"e{n}", w, n)
            topic = create_topic(bootstrap, f"e{n}-{uuid.uuid4().hex[:8]}")
            log(f"filling {topic}: {records} records over {n} machines ({weights / 2**20:.1f} MiB)")
            fill(bootstrap, topic, w, records)
            variants[f"entities={n:,}"] = (topic, {})
            if n == max(counts):
                variants[f"entities={n:,}, LRU"] = (
                    topic,
                    {"entity_memory_mb": weights / 4 / 2**20},
                )
        for run in range(runs):
            names = list(variants) if run % 2 == 0 else list(variants)[::-1]
            for name in names:
                topic, extra = variants[name]
                # the model is named like the topic's prefix: single, e1, e100, e10000
                rate = run_worker(worker_settings(kafka, store, topic, **extra), records)
                rates.setdefault(name, []).append(rate)
                log(f"run {run + 1}/{runs} {name:24s} {rate:10.0f} rec/s")
    return rates


def markdown(
    rates: dict[str, list[float]], model: dict[str, float], records: int, runs: int
) -> str:
    single = statistics.median(rates["single"])
    lines = [
        f"Worker throughput, json32 + machine field, {records:,} records per variant "
        f"(median of {runs} interleaved runs)",
        "",
        "| variant | records/s | of single-model |",
        "| --- | ---: | ---: |",
    ]
    for name, values in rates.items():
        rate = statistics.median(values)
        lines.append(f"| {name} | {rate:,.0f} | {rate / single:.0%} |")
    lines += [
        "",
        "Model call alone (1,024-row batches, one CPU thread, no Kafka)",
        "",
        "| variant | rows/s | of single-model |",
        "| --- | ---: | ---: |",
    ]
    for name, rate in model.items():
        lines.append(f"| {name} | {rate:,.0f} | {rate / model['single']:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", help="use this broker instead of starting a local one")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--entities", default=",".join(map(str, COUNTS)), help="entity counts")
    p.add_argument("--out", type=Path, default=Path("bench-entity-throughput.json"))
    args = p.parse_args(argv)
    counts = tuple(int(c) for c in args.entities.split(","))
    torch.set_grad_enabled(False)
    torch.set_num_threads(1)  # the worker's default (PIPELINE_TORCH_THREADS=1)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    model = model_call_table(make_workloads()["json32"], args.runs, counts)
    with broker(args.bootstrap) as bootstrap:
        rates = run_bench(bootstrap, args.records, args.runs, log, counts)
    print(markdown(rates, model, args.records, args.runs))
    args.out.write_text(json.dumps({"worker": rates, "model_call": model}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
