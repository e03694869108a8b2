"""The benchmarks run on a tiny slice, so they cannot rot (their numbers are not checked)."""

from __future__ import annotations

from bench.inference_throughput import main as inference_main
from bench.worker_throughput import Sizes, markdown, run_bench


def test_worker_throughput_bench_runs_on_a_tiny_slice(kafka_bootstrap):
    sizes = Sizes(json32=400, json784=60, bin784=200, naive=30)
    results = run_bench(
        kafka_bootstrap, sizes, runs=1, latency_s=1.0, workloads=["json32", "json784", "bin784"],
        log=lambda _: None,
    )  # fmt: skip
    assert set(results.rates) == {"json32", "json784", "bin784"}
    assert set(results.rates["json32"]) == {"ceiling", "worker", "worker+scores", "naive"}
    assert set(results.rates["bin784"]) == {"ceiling", "worker", "naive"}  # overlap: removed
    assert all(r > 0 for variants in results.rates.values() for v in variants.values() for r in v)
    assert all(lat["records"] > 0 for runs in results.latency.values() for lat in runs)
    table = markdown(results, sizes, runs=1)
    assert "| json32 |" in table and "p99 ms" in table
    assert "| worker >= 80% of the ceiling | json32 |" in table


def test_inference_bench_runs(capsys):
    assert inference_main(["--sizes", "256", "--repeats", "1"]) == 0
    assert "| img784 | cpu, 1 thread |" in capsys.readouterr().out


def test_entity_throughput_bench_runs_on_a_tiny_slice(kafka_bootstrap):
    from bench.entity_throughput import markdown, model_call_table
    from bench.entity_throughput import run_bench as run_entities
    from bench.worker_throughput import make_workloads

    rates = run_entities(kafka_bootstrap, 300, 1, lambda _: None, counts=(1, 7))
    assert set(rates) == {"single", "entities=1", "entities=7", "entities=7, LRU"}
    model = model_call_table(make_workloads()["json32"], 1, counts=(1, 7))
    assert "| entities=7, LRU |" in markdown(rates, model, 300, 1)
