"""Training: reproducibility, streaming vs cached, threshold and per-unit statistics from the
worker's own scorer, VAE ELBO scores, checkpoint/resume of a killed run, progress output."""

import io
import json
import logging
import signal
import subprocess
import time

import numpy as np
import pyarrow as pa
import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from pipeline.contract.artifact import latest_version, load_artifact
from pipeline.contract.exceptions import ArtifactNotFound, ConfigError
from pipeline.contract.models import ModelConfig, VariationalAutoEncoder, build_model
from pipeline.contract.scoring import ReconstructionScorer, Scorer
from pipeline.contract.tabular import encode_record_batch
from tests.support.training import part_mask, part_rows, trainer_cmd, trainer_env, write_sensors
from trainer.data import ParquetSource
from trainer.fit import fit
from trainer.loop import CPU_BF16_MIN_PARAMS, TrainStep, _train_epoch, autocast_dtype
from trainer.progress import BarReporter, LogReporter, NullReporter, make_reporter
from trainer.rows import Chunk
from trainer.settings import load_trainer_settings
from trainer.spec import SpecOptions, infer_spec

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SMALL = {"hidden_dims": "16", "latent_dim": 4, "batch_size": 64, "id_column": "machine_id"}


@pytest.fixture(scope="module")
def sensors(tmp_path_factory):
    return write_sensors(tmp_path_factory.mktemp("sensors"), 3000, files=2, row_group=700)


def _fit(data, store, name="m", **overrides):
    settings = {"epochs": 3, "seed": 4, **SMALL, **overrides}
    return fit(load_trainer_settings(data=str(data), model_store=str(store), name=name, **settings))


def _weights(store, manifest):
    return load_file(str(store / manifest.name / manifest.version / "model.safetensors"))


def test_same_seed_gives_identical_weights_and_threshold_another_seed_does_not(sensors, tmp_path):
    a = _fit(sensors, tmp_path, "a")
    b = _fit(sensors, tmp_path, "b")
    c = _fit(sensors, tmp_path, "c", seed=5)
    assert a.weights.sha256 == b.weights.sha256
    assert a.threshold == b.threshold
    assert a.training.validation_loss == b.training.validation_loss
    assert a.weights.sha256 != c.weights.sha256
    wa, wb = _weights(tmp_path, a), _weights(tmp_path, b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_streaming_from_parquet_trains_the_same_model_as_caching_in_ram(sensors, tmp_path):
    cached = _fit(sensors, tmp_path, "cached", shuffle_buffer_mb=0.02, read_batch_rows=256)
    streamed = _fit(
        sensors, tmp_path, "streamed", memory_budget_mb=0, shuffle_buffer_mb=0.02,
        read_batch_rows=256,
    )  # fmt: skip
    assert (cached.training.data_mode, streamed.training.data_mode) == ("memory", "stream")
    assert cached.weights.sha256 == streamed.weights.sha256
    assert cached.threshold == streamed.threshold


def _held_out_rows(data, spec, seed=4):
    """Every calibration row, read and encoded independently of the trainer's own path."""
    conts, cats = [], []
    source = ParquetSource(str(data))
    for batch in source.batches(spec.column_names):
        keep = part_mask(batch.positions, source.total_rows, "calibrate", seed)
        cont, cat = encode_record_batch(batch.table.filter(pa.array(keep)), spec)
        conts.append(cont)
        cats.append(cat)
    return np.concatenate(conts), np.concatenate(cats)


def conformal(scores, q):
    """The ceil((n+1)q)-th smallest score, computed here independently of the trainer."""
    k = int(np.ceil((len(scores) + 1) * q))
    return np.sort(scores)[k - 1]


def test_threshold_and_unit_statistics_come_from_all_calibration_rows(sensors, tmp_path):
    manifest = _fit(sensors, tmp_path, quantile=0.95)
    loaded = load_artifact(tmp_path, "m")
    spec = loaded.manifest.features
    cont, cat = _held_out_rows(sensors, spec)
    assert manifest.threshold.rows == len(cont) == part_rows(3000, seed=4)["calibrate"]
    scorer = Scorer(spec, loaded.model, torch.device("cpu"))
    scores = scorer.score(cont, cat).scores
    assert manifest.threshold.value == pytest.approx(conformal(scores, 0.95), rel=1e-5)
    assert manifest.score_quantiles["0.99"] == pytest.approx(np.quantile(scores, 0.99), rel=1e-5)
    with torch.inference_mode():
        errors = scorer.unit_errors(cont, cat).numpy()
    np.testing.assert_allclose(manifest.unit_error_mean, errors.mean(axis=0), rtol=1e-4)
    p99 = np.quantile(errors, 0.99, axis=0)
    np.testing.assert_allclose(manifest.unit_error_p99, p99, rtol=1e-4)
    assert len(manifest.unit_error_p99) == spec.n_units
    assert manifest.training.rows_calibration == len(cont)
    assert manifest.training.rows_train == part_rows(3000, seed=4)["fit"]
    assert manifest.training.rows_validation == part_rows(3000, seed=4)["select"]


def test_vae_elbo_score_is_stored_and_the_worker_scorer_uses_it(sensors, tmp_path):
    manifest = _fit(sensors, tmp_path, "vae", model="vae", score="elbo", beta=1.0)
    assert manifest.model.score == "elbo"
    loaded = load_artifact(tmp_path, "vae")
    spec = loaded.manifest.features
    cont, cat = _held_out_rows(sensors, spec)
    scorer = Scorer(spec, loaded.model, torch.device("cpu"))
    elbo = scorer.score(cont, cat).scores
    with torch.inference_mode():
        recon = scorer.unit_errors(cont, cat).mean(dim=1).numpy()
        x = scorer.module.model_input(torch.from_numpy(cont), torch.from_numpy(cat))
        assert isinstance(loaded.model, VariationalAutoEncoder)
        kl = loaded.model.kl_per_record(x).numpy() / spec.input_dim
    np.testing.assert_allclose(elbo, recon + kl, rtol=1e-5, atol=1e-6)
    assert (kl > 0).all()
    assert manifest.threshold.value == pytest.approx(conformal(elbo, 0.99), rel=1e-5)


def test_elbo_needs_a_vae():
    with pytest.raises(ConfigError, match=r"TRAINER_SCORE.*needs model=vae"):
        load_trainer_settings(model="ae", score="elbo")


def _checkpoint_epoch(path):
    try:
        return int(torch.load(path, weights_only=True)["epoch"])
    except (OSError, RuntimeError, EOFError):  # renamed into place between exists() and load
        return 0


def test_a_killed_run_resumes_from_its_checkpoint_and_ends_like_an_uninterrupted_one(
    sensors, tmp_path
):
    common = {"epochs": 6, "patience": 100, "seed": 9, "hidden_dims": "16", "latent_dim": 4}
    reference = fit(
        load_trainer_settings(
            data=str(sensors), model_store=str(tmp_path / "ref"), batch_size=32, **common
        )
    )
    ckpt = tmp_path / "ckpt"
    args = [
        "--data", sensors, "--model-store", tmp_path / "store", "--checkpoint-dir", ckpt,
        "--batch-size", 32, "--epochs", 6, "--patience", 100, "--seed", 9,
        "--hidden-dims", 16, "--latent-dim", 4,
    ]  # fmt: skip
    proc = subprocess.Popen(trainer_cmd(*args), env=trainer_env(), stderr=subprocess.PIPE)
    checkpoint = ckpt / "checkpoint-rank0.pt"
    deadline = time.monotonic() + 120
    while _checkpoint_epoch(checkpoint) < 2 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _checkpoint_epoch(checkpoint)
    assert 2 <= killed_at < 6
    with pytest.raises(ArtifactNotFound):
        latest_version(tmp_path / "store", "default")
    with pytest.raises(ConfigError, match="other data or settings"):
        fit(
            load_trainer_settings(
                data=str(sensors), model_store=str(tmp_path / "store"), batch_size=32,
                checkpoint_dir=str(ckpt), **{**common, "seed": 10},
            )
        )  # fmt: skip
    resumed = subprocess.run(
        trainer_cmd(*args), env=trainer_env(), capture_output=True, text=True, check=False
    )
    assert resumed.returncode == 0, resumed.stderr
    manifest = load_artifact(tmp_path / "store", "default").manifest
    assert manifest.training.resumed_from_epoch == killed_at
    assert manifest.training.validation_loss == reference.training.validation_loss
    assert manifest.weights.sha256 == reference.weights.sha256
    assert manifest.threshold == reference.threshold
    assert not checkpoint.exists()  # a published run removes its checkpoint


def test_progress_is_log_lines_off_a_terminal(sensors, tmp_path, caplog):
    assert isinstance(make_reporter("auto", 3, is_main=True), LogReporter)  # pytest captures
    assert isinstance(make_reporter("bar", 3, is_main=False), NullReporter)
    with caplog.at_level(logging.INFO, logger="trainer.fit"):
        _fit(sensors, tmp_path, epochs=2)
    epochs = [r for r in caplog.records if r.getMessage() == "epoch"]
    assert [r.epoch for r in epochs] == [1, 2]
    assert all(r.rows_per_s > 0 and r.train_loss > 0 for r in epochs)


def test_progress_bars_show_epoch_loss_and_rows_per_second():
    out = io.StringIO()
    bars = BarReporter(2, console=Console(file=out, force_terminal=True, width=120))
    bars.start_epoch(1, 3)
    for _ in range(3):
        bars.advance(64, 0.5)
    bars.end_epoch(1, 0.5, 0.4, 1e-3, 1234.0)
    bars.close()
    text = out.getvalue()
    assert "epoch 1" in text and "rows/s" in text and "loss 0.5000" in text
    assert "validation 0.40000" in text


def test_cli_takes_the_new_flags_and_reports_bad_settings_with_exit_2(sensors, tmp_path):
    from tests.support.training import run_trainer

    ok = run_trainer(
        "--data", sensors, "--model-store", tmp_path, "--name", "flags", "--epochs", 1,
        "--model", "vae", "--score", "elbo", "--memory-budget-mb", 0, "--shuffle-buffer-mb", 1,
        "--numeric-columns", "rpm", "--no-mixed-precision", "--progress", "log",
        "--id-column", "machine_id", "--hidden-dims", "16", "--latent-dim", 4,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    manifest = load_artifact(tmp_path, "flags").manifest
    assert ok.stdout.split() == [manifest.version]
    assert (manifest.model.kind, manifest.model.score) == ("vae", "elbo")
    assert manifest.training.data_mode == "stream"
    lines = [json.loads(line) for line in ok.stderr.splitlines() if line.startswith("{")]
    assert any(line["msg"] == "epoch" and line["rows_per_s"] > 0 for line in lines)
    bad = run_trainer("--data", sensors, "--model-store", tmp_path, "--score", "elbo")
    assert bad.returncode == 2
    assert "TRAINER_SCORE" in bad.stderr


def test_categorical_and_id_columns_survive_streaming_spec_inference(sensors):
    spec, rows = infer_spec(
        ParquetSource(str(sensors), batch_rows=100), SpecOptions(id_column="machine_id")
    )
    kinds = {f.name: f.kind for f in spec.features}
    assert kinds["mode"] == "categorical" and kinds["door_open"] == "boolean"
    assert "machine_id" not in kinds
    assert rows == part_rows(3000)["fit"]


def test_the_autocast_step_trains_in_bfloat16_on_the_cpu_too(sensors):
    """The CUDA path wraps each step in torch.autocast; the same code runs here under CPU
    bfloat16 autocast, so a dtype mistake in the model or loss shows without a GPU."""
    spec, _ = infer_spec(ParquetSource(str(sensors)), SpecOptions(id_column="machine_id"))
    cfg = ModelConfig(kind="vae", input_dim=spec.input_dim, output_dim=spec.input_dim)
    model = build_model(cfg)
    step = TrainStep(ReconstructionScorer(spec, model))
    optimizer = torch.optim.Adam(model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    rows = next(ParquetSource(str(sensors)).batches(spec.column_names)).table  # 700 rows
    cont, cat = encode_record_batch(rows, spec)
    batches = [Chunk(cont[i : i + 64], cat[i : i + 64], np.zeros(64, np.uint64)) for i in (0, 64)]
    loss, seen = _train_epoch(
        step, optimizer, torch.amp.GradScaler("cuda", enabled=False), iter(batches), 2,
        torch.device("cpu"), torch.bfloat16, NullReporter(), skip_single=False,
    )  # fmt: skip
    assert seen == 128
    assert np.isfinite(loss) and loss > 0
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_cpu_autocast_only_for_big_models_on_cpus_with_native_bfloat16(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr("trainer.loop.cpu_has_native_bf16", lambda: True)
    assert autocast_dtype(cpu, enabled=True, n_params=CPU_BF16_MIN_PARAMS) == torch.bfloat16
    assert autocast_dtype(cpu, enabled=True, n_params=CPU_BF16_MIN_PARAMS - 1) is None
    assert autocast_dtype(cpu, enabled=False, n_params=10**7) is None
    monkeypatch.setattr("trainer.loop.cpu_has_native_bf16", lambda: False)
    assert autocast_dtype(cpu, enabled=True, n_params=10**7) is None  # emulated: slower


def test_a_big_model_trained_under_cpu_bfloat16_keeps_a_float32_threshold(
    sensors, tmp_path, monkeypatch
):
    """Forced on (whatever this CPU has): the manifest says bfloat16, and the threshold is the
    float32 scores' quantile, exactly what the worker will compute."""
    monkeypatch.setattr("trainer.loop.cpu_has_native_bf16", lambda: True)
    manifest = _fit(sensors, tmp_path, "bf16", device="cpu", hidden_dims="512,256", latent_dim=8)
    assert manifest.training.mixed_precision == "bfloat16"
    loaded = load_artifact(tmp_path, "bf16")
    cont, cat = _held_out_rows(sensors, loaded.manifest.features)
    scores = Scorer(loaded.manifest.features, loaded.model, torch.device("cpu")).score(cont, cat)
    assert manifest.threshold.value == pytest.approx(conformal(scores.scores, 0.99), rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fit_on_cuda_uses_mixed_precision_and_a_float32_threshold(sensors, tmp_path):
    manifest = _fit(sensors, tmp_path, "gpu", device="cuda")
    assert manifest.training.device.startswith("cuda")
    assert manifest.training.mixed_precision in {"bfloat16", "float16"}
    loaded = load_artifact(tmp_path, "gpu")
    cont, cat = _held_out_rows(sensors, loaded.manifest.features)
    scores = Scorer(loaded.manifest.features, loaded.model, torch.device("cpu")).score(cont, cat)
    assert manifest.threshold.value == pytest.approx(np.quantile(scores.scores, 0.99), rel=1e-4)
