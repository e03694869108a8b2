"""The three-way split: fit / select / calibrate, by rows, entity or time."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.contract.exceptions import DataError
from trainer.data import ParquetSource
from trainer.split import (
    CALIBRATE,
    FIT,
    SELECT,
    SplitOptions,
    plan_split,
    split_indices,
)


def _parts_over_source(path, options):
    """Part of every row, through plan_split + RowSplit.parts over Parquet batches."""
    source = ParquetSource(str(path), batch_rows=333)
    plan = plan_split(source, options)
    out = []
    for batch in source.batches(source.schema.names):
        out.append(plan.parts(batch.positions, batch.table))
    return plan, np.concatenate(out)


def test_row_split_is_deterministic_disjoint_and_close_to_the_fractions(tmp_path):
    pq.write_table(pa.table({"x": np.arange(100_000.0)}), tmp_path / "d.parquet")
    plan, parts = _parts_over_source(tmp_path / "d.parquet", SplitOptions(seed=3))
    assert plan.kind == "rows" and plan.block_rows == 64
    shares = np.bincount(parts, minlength=3) / parts.size
    np.testing.assert_allclose(shares, [0.7, 0.1, 0.2], atol=0.04)  # 1,563 blocks: sd ~0.01
    _, again = _parts_over_source(tmp_path / "d.parquet", SplitOptions(seed=3))
    assert (parts == again).all()
    _, other = _parts_over_source(tmp_path / "d.parquet", SplitOptions(seed=4))
    assert (parts != other).any()
    # neighbouring rows stay together: blocks of 64 rows share one part
    blocks = parts[: 64 * 1500].reshape(-1, 64)
    assert (blocks == blocks[:, :1]).all()


def test_split_indices_of_a_table_agree_with_the_parquet_split(tmp_path):
    table = pa.table({"x": np.arange(5000.0), "machine": [f"m{i % 37}" for i in range(5000)]})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=700)
    for options in (SplitOptions(seed=1), SplitOptions(seed=1, by="machine")):
        _, parts = _parts_over_source(tmp_path / "d.parquet", options)
        indices = split_indices(table, options)
        for code, name in ((FIT, "fit"), (SELECT, "select"), (CALIBRATE, "calibrate")):
            np.testing.assert_array_equal(indices[name], np.flatnonzero(parts == code))


def test_entity_split_keeps_every_entity_on_one_side(tmp_path):
    machines = np.array([f"m-{i % 200}" for i in range(20_000)])
    table = pa.table({"x": np.arange(20_000.0), "machine": machines})
    pq.write_table(table, tmp_path / "d.parquet")
    plan, parts = _parts_over_source(tmp_path / "d.parquet", SplitOptions(by="machine"))
    assert plan.kind == "entity"
    for m in np.unique(machines):
        assert len(set(parts[machines == m].tolist())) == 1
    assert set(parts.tolist()) == {FIT, SELECT, CALIBRATE}


def test_time_split_calibrates_on_the_latest_rows_and_selects_on_the_ones_before(tmp_path):
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rng = np.random.default_rng(0)
    hours = rng.permutation(np.repeat(np.arange(1000), 10))  # shuffled, 10 rows per hour
    times = [start + timedelta(hours=int(h)) for h in hours]
    table = pa.table({"x": np.arange(10_000.0), "ts": pa.array(times, pa.timestamp("ms", "UTC"))})
    pq.write_table(table, tmp_path / "d.parquet")
    plan, parts = _parts_over_source(tmp_path / "d.parquet", SplitOptions(by="ts"))
    assert plan.kind == "time"
    assert hours[parts == FIT].max() < hours[parts == SELECT].min()
    assert hours[parts == SELECT].max() < hours[parts == CALIBRATE].min()
    np.testing.assert_allclose(np.bincount(parts) / parts.size, [0.7, 0.1, 0.2], atol=0.002)
    for h in range(1000):  # equal times never straddle a cut
        assert len(set(parts[hours == h].tolist())) == 1


def test_a_numeric_column_can_be_read_as_time_and_bad_options_are_named(tmp_path):
    table = pa.table({"x": np.arange(1000.0), "epoch_s": np.arange(1000) * 60})
    _, parts = _parts_over_source(_write(tmp_path, table), SplitOptions(by="epoch_s", kind="time"))
    assert (np.flatnonzero(parts == CALIBRATE) >= 800).all()
    with pytest.raises(DataError, match="split column 'nope' not in the data"):
        plan_split(ParquetSource(_write(tmp_path, table)), SplitOptions(by="nope"))
    with pytest.raises(DataError, match="calibration_fraction"):
        SplitOptions(validation_fraction=0.5, calibration_fraction=0.5)


def _write(tmp_path, table):
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    return str(path)
