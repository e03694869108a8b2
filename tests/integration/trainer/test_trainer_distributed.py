"""Multi-process training: torchrun starts two CPU ranks (gloo) of the real CLI."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.contract.artifact import load_artifact
from pipeline.contract.scoring import Scorer
from pipeline.contract.tabular import encode_record_batch
from tests.support.training import part_mask, part_rows, trainer_env, write_sensors
from trainer.data import ParquetSource

ROWS = 4000


def _torchrun(*args):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return subprocess.run(
        [*torchrun, "--nproc-per-node", "2", "-m", "trainer", "--log-format", "json", "fit"]
        + [str(a) for a in args],
        capture_output=True,
        text=True,
        check=False,
        env=trainer_env(),
        timeout=240,
    )


def _logs(stderr, msg):
    out = []
    for line in stderr.splitlines():
        start = line.find("{")
        if start < 0:
            continue
        try:
            record = json.loads(line[start:])
        except json.JSONDecodeError:
            continue
        if record.get("msg") == msg:
            out.append(record)
    return out


@pytest.mark.usefixtures("torch_one_thread")
def test_two_ranks_train_on_their_own_shards_and_rank0_publishes_one_model(tmp_path):
    data = write_sensors(tmp_path / "data", ROWS, files=3, row_group=500)
    store = tmp_path / "store"
    run = _torchrun(
        "--data", data, "--model-store", store, "--name", "ddp", "--id-column", "machine_id",
        "--epochs", 3, "--batch-size", 64, "--hidden-dims", 16, "--latent-dim", 4,
        "--memory-budget-mb", 0, "--device", "cpu",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    versions = [p.name for p in (store / "ddp").iterdir() if not p.name.startswith(".")]
    assert sorted(versions) == sorted(["LATEST", run.stdout.split()[-1]])  # one version
    manifest = load_artifact(store, "ddp").manifest
    assert manifest.training.world_size == 2
    assert manifest.training.data_mode == "stream"

    training = _logs(run.stderr, "training")
    shards = sorted((r["rank"], r["first_row"], r["end_row"]) for r in training)
    assert shards == [(0, 0, ROWS // 2), (1, ROWS // 2, ROWS)]

    # the threshold is a quantile over the calibration rows of *both* shards
    parts = part_rows(ROWS)
    held_out = parts["calibrate"]
    assert manifest.threshold.rows == held_out
    assert manifest.training.rows_validation == parts["select"]
    assert manifest.training.rows_train == parts["fit"]
    loaded = load_artifact(store, "ddp")
    spec = loaded.manifest.features
    conts, cats = [], []
    for batch in ParquetSource(str(data)).batches(spec.column_names):
        keep = part_mask(batch.positions, ROWS, "calibrate")
        cont, cat = encode_record_batch(batch.table.filter(pa.array(keep)), spec)
        conts.append(cont)
        cats.append(cat)
    scores = (
        Scorer(spec, loaded.model, torch.device("cpu"))
        .score(np.concatenate(conts), np.concatenate(cats))
        .scores
    )
    assert len(scores) == held_out
    k = int(np.ceil((held_out + 1) * 0.99))
    assert manifest.threshold.value == pytest.approx(np.sort(scores)[k - 1], rel=1e-5)


def test_a_data_error_on_one_rank_fails_every_rank_and_publishes_nothing(tmp_path):
    data = write_sensors(tmp_path / "data", 2000, files=2)
    bad = pq.read_table(data / "part-001.parquet").to_pandas()
    bad["rpm"] = bad["rpm"].astype(str)
    bad.loc[bad.index[-10], "rpm"] = "broken"
    pq.write_table(pa.Table.from_pandas(bad, preserve_index=False), data / "part-001.parquet")
    store = tmp_path / "store"
    run = _torchrun(
        "--data", data, "--model-store", store, "--numeric-columns", "rpm",
        "--id-column", "machine_id", "--epochs", 1, "--validation-fraction", 0.01,
    )  # fmt: skip
    assert run.returncode != 0
    assert "'broken'" in run.stderr
    assert "another rank" in run.stderr  # rank 0 read only good rows, yet stops too
    assert not (store / "default" / "LATEST").exists()
