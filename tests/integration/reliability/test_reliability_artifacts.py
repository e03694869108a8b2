"""Broken model artifacts: refused at start by a real ``python -m pipeline run`` (exit 3, the
message names the file) and refused at reload while the old model keeps serving. A pickle
whose unpickling would create a marker file proves loading never unpickles."""

from __future__ import annotations

import builtins
import json
import os
import pickle
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from pipeline.contract.artifact import MANIFEST_FILE, WEIGHTS_FILE, set_latest, weights_bytes_sha256
from pipeline.worker.loop import Worker
from tests.support.factories import numeric_spec, publish_model
from tests.support.workers import (
    NAME,
    Background,
    numeric_records,
    produce_records,
    publish,
    settings,
    wait_for,
)

KINDS = [
    "truncated", "checksum", "spec_mismatch", "pickle", "weights_outside", "torch_save",
    "missing_weights",
]  # fmt: skip
AT_START = KINDS[:5]  # the same checks refuse the others; each process costs seconds here


class _Marker:
    """Unpickling this opens (creates) ``path``: evidence that something unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def _rewrite_checksum(version_dir: Path) -> None:
    manifest = json.loads((version_dir / MANIFEST_FILE).read_text())
    manifest["weights"]["sha256"] = weights_bytes_sha256(version_dir / WEIGHTS_FILE)
    (version_dir / MANIFEST_FILE).write_text(json.dumps(manifest))


def break_artifact(version_dir: Path, kind: str, marker: Path) -> Path:
    """Break a published version in place; returns the file the refusal must name."""
    weights, manifest = version_dir / WEIGHTS_FILE, version_dir / MANIFEST_FILE
    if kind == "truncated":  # cut in half, checksum updated: the parser must notice
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        _rewrite_checksum(version_dir)
    elif kind == "checksum":  # one flipped bit
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
    elif kind == "spec_mismatch":  # the manifest reads 5 columns, the weights take 4
        raw = json.loads(manifest.read_text())
        raw["features"] = json.loads(numeric_spec(5).model_dump_json())
        raw["model"]["input_dim"] = raw["model"]["output_dim"] = 5
        manifest.write_text(json.dumps(raw))
    elif kind == "pickle":  # a pickle where weights should be, checksum updated
        weights.write_bytes(pickle.dumps({"encoder.0.weight": _Marker(marker)}))
        _rewrite_checksum(version_dir)
    elif kind == "torch_save":  # the usual mistake: torch.save (a zip holding a pickle)
        torch.save({"w": torch.zeros(2), "m": _Marker(marker)}, weights)
        _rewrite_checksum(version_dir)
    elif kind == "weights_outside":  # intact weights, but the manifest points out of the
        # version directory (any file the worker can read could be named this way)
        outside = version_dir.parent / f"elsewhere-{version_dir.name}.safetensors"
        weights.rename(outside)
        raw = json.loads(manifest.read_text())
        raw["weights"]["file"] = f"../{outside.name}"
        manifest.write_text(json.dumps(raw))
        return manifest
    elif kind == "missing_weights":
        weights.unlink()
    else:
        raise ValueError(kind)
    return weights


def test_a_broken_model_is_refused_at_start_with_exit_3_naming_the_file(tmp_path):
    """One real worker process per kind of damage, all at once (no broker needed: the model
    is loaded before Kafka is contacted)."""
    procs = {}
    for kind in AT_START:
        store = tmp_path / kind
        version = publish(store).version
        named = break_artifact(store / NAME / version, kind, tmp_path / f"{kind}.unpickled")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
        env |= {
            "OMP_NUM_THREADS": "1",
            "PIPELINE_MODEL_STORE": str(store),
            "PIPELINE_MODEL_NAME": NAME,
            "PIPELINE_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "PIPELINE_METRICS_PORT": "0",
            "PIPELINE_DEVICE": "cpu",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs[kind] = (proc, named)
    for kind, (proc, named) in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 3, (kind, err[-2000:])
        assert "cannot load model" in err and str(named) in err, (kind, err[-2000:])
        assert "Traceback" not in err, (kind, err[-2000:])
        assert not (tmp_path / f"{kind}.unpickled").exists(), f"{kind}: something unpickled it"


@pytest.mark.kafka
def test_broken_versions_are_refused_at_reload_while_the_old_model_keeps_serving(
    kafka_bootstrap, make_topic, tmp_path, torch_one_thread
):
    store = tmp_path / "store"
    v1 = publish(store, seed=0).version
    source = make_topic(partitions=2)
    s = settings(kafka_bootstrap, store, source, reload_interval_s=0.2)
    bg = Background(Worker(s), idle_timeout_s=60)
    produce_records(kafka_bootstrap, source, numeric_records(50))
    wait_for(lambda: bg.value("pipeline_records_consumed_total") >= 50, 60, "first records")
    for n, kind in enumerate(KINDS, start=1):
        staging = tmp_path / f"staging-{kind}"
        version = publish_model(staging, numeric_spec(4), name=NAME, seed=n).version
        break_artifact(staging / NAME / version, kind, tmp_path / f"{kind}.unpickled")
        shutil.copytree(staging / NAME / version, store / NAME / version)
        for outside in (staging / NAME).glob("elsewhere-*"):  # weights_outside's weights
            shutil.copy(outside, store / NAME / outside.name)
        set_latest(store, NAME, version)
        wait_for(partial(refused_at_least, bg, n), 30, f"{kind} refused")
        produce_records(kafka_bootstrap, source, numeric_records(10, start=40 + 10 * n))
        wait_for(partial(consumed_at_least, bg, 50 + 10 * n), 60, "records")
        assert bg.value("pipeline_model_info", {"name": NAME, "version": v1}) == 1, kind
        assert not (tmp_path / f"{kind}.unpickled").exists(), f"{kind}: something unpickled it"
    bg.stop()
    assert bg.value("pipeline_model_reloads_total", {"result": "loaded"}) == 0
    assert bg.value("pipeline_batch_failures_total", {"stage": "score"}) == 0


def refused_at_least(bg: Background, n: int) -> bool:
    return bg.value("pipeline_model_reloads_total", {"result": "refused"}) >= n


def consumed_at_least(bg: Background, n: int) -> bool:
    return bg.value("pipeline_records_consumed_total") >= n
