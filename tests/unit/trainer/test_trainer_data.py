"""Reading training data: sharding, per-file schema checks, text in numeric columns, fsspec,
and the bounded shuffle. Real Parquet files throughout."""

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.contract.artifact import latest_version, load_artifact
from pipeline.contract.exceptions import ArtifactNotFound, DataError
from pipeline.contract.features import NumericFeature
from trainer.data import ParquetSource
from trainer.fit import fit
from trainer.rows import Chunk, shuffled_batches
from trainer.settings import load_trainer_settings
from trainer.spec import SpecOptions, infer_spec

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _indexed_files(root, sizes, row_group):
    """Files whose column ``i`` holds the global position each row should get."""
    start = 0
    for n, size in enumerate(sizes):
        i = np.arange(start, start + size)
        pq.write_table(
            pa.table({"i": i, "x": i * 0.5}), root / f"f{n}.parquet", row_group_size=row_group
        )
        start += size
    return start


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_every_row_once_with_its_global_position(tmp_path, world):
    total = _indexed_files(tmp_path, [1000, 37, 0, 2500], row_group=300)
    source = ParquetSource(str(tmp_path), batch_rows=128)
    assert source.count_rows() == total
    seen, sizes = [], []
    for rank in range(world):
        positions = []
        for batch in source.batches(["i"], rank, world):
            assert batch.table.column("i").to_numpy().tolist() == batch.positions.tolist()
            positions.extend(batch.positions.tolist())
        assert positions == sorted(positions)  # a contiguous range, in order
        sizes.append(len(positions))
        seen.extend(positions)
    assert seen == list(range(total))
    assert max(sizes) - min(sizes) <= 1


def test_shard_reads_only_its_own_row_groups(tmp_path):
    _indexed_files(tmp_path, [1000], row_group=100)
    source = ParquetSource(str(tmp_path))
    spans = source.shard(1, 4)  # rows 250..500
    assert [(s.piece.start, s.lo, s.hi) for s in spans] == [
        (200, 50, 100),
        (300, 0, 100),
        (400, 0, 100),
    ]


def _files(tmp_path, *frames):
    root = tmp_path / "data"
    root.mkdir()
    for n, frame in enumerate(frames):
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), root / f"f{n}.parquet")
    return str(root)


def _fit_fails(tmp_path, data, match, **settings):
    store = tmp_path / "store"
    with pytest.raises(DataError, match=match):
        fit(load_trainer_settings(data=data, model_store=str(store), epochs=1, **settings))
    with pytest.raises(ArtifactNotFound):
        latest_version(store, "default")


def test_files_that_disagree_on_a_numeric_column_are_named(tmp_path):
    good = pd.DataFrame({"a": np.arange(50.0), "b": np.arange(50.0) % 7})
    text = pd.DataFrame({"a": ["1.5", "oops"] * 25, "b": np.arange(50.0) % 5})
    data = _files(tmp_path, good, text)
    _fit_fails(tmp_path, data, r"column 'a': text where numbers are expected.*f1\.parquet")


def test_a_file_missing_a_feature_column_is_named(tmp_path):
    data = _files(
        tmp_path,
        pd.DataFrame({"a": np.arange(50.0), "b": np.arange(50.0) % 7}),
        pd.DataFrame({"a": np.arange(50.0)}),
    )
    _fit_fails(tmp_path, data, r"f1\.parquet: feature columns missing from this file: \['b'\]")


def test_forced_numeric_parses_text_and_names_the_value_that_is_not_a_number(tmp_path):
    frame = pd.DataFrame({"code": [str(v) for v in np.arange(200) % 13], "x": np.arange(200.0)})
    path = tmp_path / "codes.parquet"
    frame.to_parquet(path)
    spec, _ = infer_spec(ParquetSource(str(path)), SpecOptions(numeric_columns=("code",)))
    code = spec.features[0]
    assert isinstance(code, NumericFeature)
    assert (code.name, code.kind) == ("code", "numeric")
    assert 5 < code.mean < 7  # parsed as numbers, not category labels
    assert {f.kind for f in infer_spec(ParquetSource(str(path)), SpecOptions())[0].features} == {
        "categorical",
        "numeric",
    }
    frame.loc[150, "code"] = "n/a"
    frame.to_parquet(path)
    _fit_fails(
        tmp_path,
        str(path),
        r"column 'code': text where numbers are expected.*'n/a'.*codes\.parquet",
        numeric_columns="code",
        validation_fraction=0.01,
        seed=3,
    )


def test_a_column_forced_two_ways_or_excluded_and_forced_is_refused(tmp_path):
    path = tmp_path / "d.parquet"
    pd.DataFrame({"a": np.arange(20.0), "b": np.arange(20.0)}).to_parquet(path)
    opts = SpecOptions(categorical_columns=("a",), numeric_columns=("a",))
    with pytest.raises(DataError, match="forced both categorical and numeric"):
        infer_spec(ParquetSource(str(path)), opts)
    with pytest.raises(DataError, match=r"excluded .* and forced"):
        infer_spec(ParquetSource(str(path)), SpecOptions(id_column="a", numeric_columns=("a",)))


def test_fsspec_url_with_a_glob_trains_and_publishes(tmp_path):
    fs = fsspec.filesystem("memory")
    frame = pd.DataFrame(
        {"a": np.random.default_rng(0).normal(size=600), "b": np.arange(600.0) % 11}
    )
    try:
        for n in range(3):
            with fs.open(f"/trainer-test/part-{n}.parquet", "wb") as fh:
                frame.iloc[n * 200 : (n + 1) * 200].to_parquet(fh)
        with fs.open("/trainer-test/notes.txt", "wb") as fh:
            fh.write(b"not matched by the glob")
        settings = load_trainer_settings(
            data="memory://trainer-test/part-*.parquet",
            model_store=str(tmp_path / "store"),
            epochs=2,
        )
        manifest = fit(settings)
    finally:
        fs.rm("/trainer-test", recursive=True)
    training = manifest.training
    assert training.rows_train + training.rows_validation + training.rows_calibration == 600
    assert load_artifact(tmp_path / "store", "default").version == manifest.version


def test_a_url_whose_filesystem_is_unknown_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="nosuchfs://"):
        fit(load_trainer_settings(data="nosuchfs://bucket/x.parquet", model_store=str(tmp_path)))


def _chunks(n, size):
    for start in range(0, n, size):
        p = np.arange(start, min(n, start + size), dtype=np.uint64)
        yield Chunk(p.astype(np.float32)[:, None], np.zeros((len(p), 0), np.int64), p)


def test_shuffle_buffer_yields_every_row_once_in_full_batches_and_stays_bounded():
    n, batch, buffer = 10_000, 64, 1000
    rng = np.random.default_rng(0)
    batches = list(shuffled_batches(_chunks(n, 300), rng, batch, buffer))
    rows = np.concatenate([b.positions for b in batches])
    assert sorted(rows.tolist()) == list(range(n))
    assert rows.tolist() != list(range(n))
    assert all(len(b) == batch for b in batches[:-1])
    assert (rows == np.concatenate([b.cont[:, 0] for b in batches]).astype(np.uint64)).all()
    # the first batch can only hold rows read before the buffer first filled
    assert batches[0].positions.max() < buffer + 300
    again = list(shuffled_batches(_chunks(n, 300), np.random.default_rng(0), batch, buffer))
    assert all((a.positions == b.positions).all() for a, b in zip(batches, again, strict=True))


def test_shuffle_of_data_smaller_than_the_buffer_is_a_full_permutation():
    batches = list(shuffled_batches(_chunks(500, 100), np.random.default_rng(1), 50, 10_000))
    rows = np.concatenate([b.positions for b in batches])
    assert sorted(rows.tolist()) == list(range(500))
    assert rows[:50].max() > 400  # late rows can come first
