import math

import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from pipeline.worker.metrics import BulkHistogram, PipelineMetrics
from pipeline.worker.processing import observe_end_to_end


def test_bulk_histogram_exports_the_same_samples_as_a_prometheus_histogram():
    buckets = (0.01, 0.1, 1, 10)
    values = [0.0, 0.01, 0.0100001, 0.5, 1, 3, 10, 11, math.inf, -2.0]
    ref_reg, bulk_reg = CollectorRegistry(), CollectorRegistry()
    ref = Histogram("h", "doc", buckets=buckets, registry=ref_reg)
    for v in values:
        ref.observe(v)
    bulk = BulkHistogram("h", "doc", buckets=buckets, registry=bulk_reg)
    bulk.observe_many(np.array(values[:4]))
    bulk.observe_many(values[4:])
    bulk.observe_many(np.array([math.nan]))  # ignored
    bulk.observe_many([])
    for le in ["0.01", "0.1", "1.0", "10.0", "+Inf"]:
        got = bulk_reg.get_sample_value("h_bucket", {"le": le})
        assert got == ref_reg.get_sample_value("h_bucket", {"le": le}), le
    assert bulk_reg.get_sample_value("h_count") == len(values)
    assert bulk_reg.get_sample_value("h_sum") == ref_reg.get_sample_value("h_sum")


class _Rec:
    def __init__(self, timestamp):
        self.timestamp = timestamp


def test_end_to_end_latency_skips_records_without_timestamps():
    metrics = PipelineMetrics()
    now_ms = 1_700_000_000_000.0
    records = [_Rec(now_ms - 20), _Rec(None), _Rec(-1), _Rec(now_ms - 3000), _Rec(now_ms + 5)]
    observe_end_to_end(metrics, records, now_ms)
    reg = metrics.registry
    assert reg.get_sample_value("pipeline_end_to_end_latency_seconds_count") == 3
    assert reg.get_sample_value("pipeline_end_to_end_latency_seconds_bucket", {"le": "0.025"}) == 2
    assert reg.get_sample_value("pipeline_end_to_end_latency_seconds_sum") == 3.02
