"""Trainer settings: env vars with prefix ``TRAINER_`` (and ``.env``), overridable by CLI flags.

Every field is documented in README "Configuration". A bad value fails at start, naming the
env var.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pipeline.common.envvars import describe_validation_error
from pipeline.contract.exceptions import ConfigError
from pipeline.contract.models import (
    DEFAULT_ACTIVATION,
    DEFAULT_DIVERSITY,
    DEFAULT_SPREAD_WEIGHT,
    DIVERSE_FROM_ROWS,
    WHITEN_ROWS_PER_UNIT,
    Activation,
    ModelKind,
    Norm,
    ScoreKind,
)
from pipeline.kafka.settings import KafkaSettings


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class TrainerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TRAINER_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    # data
    data: str | None = Field(
        default=None, description="Parquet file, directory, glob or fsspec URL of normal rows."
    )
    id_column: str | None = Field(default=None, description="Carried through, never a feature.")
    label_column: str | None = Field(default=None, description="Never used for fitting.")
    ignore_columns: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated columns to leave out."
    )
    categorical_columns: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated columns forced to categorical."
    )
    numeric_columns: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated columns forced to numeric (text is parsed as numbers).",
    )
    max_categories: int = Field(
        default=50, ge=1, le=100_000, description="Most frequent values kept per categorical."
    )
    max_levels: int = Field(
        default=0,
        ge=0,
        le=100,
        description="A numeric column with 2 to this many distinct values in the fit rows (a "
        "score, a rating, a code) is read as categorical unless named in numeric_columns: "
        "better on rare combinations of common levels, worse on a value far outside them "
        "(README: Discrete columns); 0 (default): never.",
    )
    heavy_tail_ratio: float = Field(
        default=3.5,
        ge=0,
        description="A numeric column whose 1st or 99th percentile in the fit rows lies more "
        "than this many interquartile ranges from its median (an amount, an income) enters "
        "the model as its signed log, sign(v) log(1 + |v| / its median magnitude), so that "
        "its normal far values do not outrank the abnormal records (README: Heavy-tailed "
        "columns); 0: never.",
    )
    missing: Literal["impute", "reject"] = Field(
        default="impute", description="Serving policy for JSON nulls (README: Missing values)."
    )
    read_batch_rows: int = Field(
        default=65_536, gt=0, description="Rows per Parquet read batch (bounds memory)."
    )
    memory_budget_mb: int = Field(
        default=1024,
        ge=0,
        description="Encoded rows up to this size (per process) are cached in RAM; larger "
        "data is streamed from Parquet every epoch. 0 always streams. Same model either way.",
    )
    shuffle_buffer_mb: float = Field(
        default=64.0,
        gt=0,
        description="Rows held (per process) to shuffle training batches; bounds memory.",
    )
    # per-entity models
    entity_column: str | None = Field(
        default=None,
        description="Fit one model per value of this column (plus a fallback on all rows); "
        "unset: one model.",
    )
    min_entity_rows: int = Field(
        default=500,
        ge=2,
        description="Fewest normal rows an entity needs for a model of its own (and enough "
        "held-out rows for the quantile); others are scored by the fallback.",
    )
    entity_batch_size: int = Field(
        default=16, ge=1, description="Rows of each entity per optimisation step."
    )
    entity_epochs: int = Field(
        default=100,
        ge=1,
        description="Most epochs of the entity models (an epoch: the median entity's rows "
        "once); each entity stops early on its own validation loss.",
    )
    entity_learning_rate: float = Field(
        default=3e-3, gt=0, description="Adam learning rate of the entity models."
    )
    entities: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated entities to refit; every other entity model (and the "
        "fallback) is reused from the base version.",
    )
    base_version: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="Version whose entity models a refit of some entities reuses; LATEST "
        "when unset.",
    )
    # publishing
    model_store: str = Field(
        default="model-store",
        min_length=1,
        description="Model store: a directory, or an fsspec URL (s3://bucket/prefix, gs://, "
        "az://, file://) with credentials from that store's usual environment (AWS_* for s3).",
    )
    name: str = Field(
        default="default",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Model name inside the store.",
    )
    # architecture
    model: ModelKind = Field(default="ae", description="ae, vae or dae (denoising).")
    hidden_dims: Annotated[list[int], NoDecode] | None = Field(
        default=None, description="Comma-separated layer sizes; default sized from the input."
    )
    latent_dim: int | None = Field(
        default=None, gt=0, description="Bottleneck width; default sized from the input."
    )
    # tanh scored better (weather 0.718 -> 0.784, tuning +0.005, untuned +0.010) but is not
    # the default: it costs over the model budget and thins the sample data's margins
    # (BENCHMARKS.md "Trials of 2026-12-01, evening").
    activation: Activation = Field(
        default=DEFAULT_ACTIVATION, description="Hidden-layer activation."
    )
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout between layers.")
    norm: Norm = Field(default="none", description="none, batch or layer normalisation.")
    beta: float = Field(default=1.0, ge=0.0, description="VAE: weight of the KL term.")
    noise: Literal["gaussian", "mask"] = Field(
        default="gaussian", description="DAE: corruption kind."
    )
    noise_level: float = Field(
        default=0.1, ge=0.0, description="DAE: noise std or masking probability."
    )
    diversity: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Ensemble training: the members' mean error minus this share of their "
        "variance (negative correlation learning); 0: independent members; unset: "
        f"{DEFAULT_DIVERSITY} from {DIVERSE_FROM_ROWS:,} fit rows, else 0 (README: Model).",
    )
    spread_weight: float | None = Field(
        default=None,
        ge=0.0,
        description="Ensemble score: error of the members' mean reconstruction plus this "
        "times their variance (1: the members' mean error); unset: "
        f"{DEFAULT_SPREAD_WEIGHT:g} from {DIVERSE_FROM_ROWS:,} fit rows, else 1.",
    )
    score: ScoreKind = Field(
        default="reconstruction",
        description="Record score the threshold uses: reconstruction error, or elbo (VAE: "
        "plus the KL term). Stored in the artifact; the worker scores the same way.",
    )
    # optimisation
    max_steps: int = Field(
        default=3000,
        ge=1,
        description="Training budget in optimiser steps (epochs = max_steps / steps per "
        "epoch, at least 1; early stopping may end sooner).",
    )
    epochs: int | None = Field(
        default=None, ge=1, description="Most epochs; unset: from max_steps."
    )
    batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Rows per optimisation step; unset: from the fit rows (32 for a few "
        "hundred rows to 256 from ~10k).",
    )
    learning_rate: float = Field(default=1e-3, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(default=0.0, ge=0, description="Adam weight decay.")
    patience: int | None = Field(
        default=None,
        ge=1,
        description="Early stopping: epochs without validation gain; unset: a tenth of the "
        "epochs, at least 5.",
    )
    members: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Autoencoders trained side by side (ae, dae), run as one batched forward "
        "pass; each member's first layer is 1/members of the single model's width.",
    )
    normalize_errors: bool = Field(
        default=True,
        description="Divide each error unit by its mean error on the select rows (at least "
        "3x the median unit's) before averaging into the record score (stored with the "
        "weights).",
    )
    whiten_residuals: bool = Field(
        default=False,
        description="Decorrelate the continuous units' reconstruction residuals (their "
        "covariance on the select rows, stored with the weights) before squaring them: for "
        "data whose anomalies break relations between correlated readings; best with at "
        f"least {WHITEN_ROWS_PER_UNIT} validation rows per continuous unit (README: Models).",
    )
    shuffled_negatives: bool = Field(
        default=False,
        description="Also train on shuffled negatives (each column permuted on its own "
        "across a batch) and push their reconstruction error up to that of guessing the "
        "mean: for data whose anomalies break relations between columns; training does "
        "twice the work, scoring is unchanged; not with per-entity models (README: Models).",
    )
    validation_fraction: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        description="Share of rows that select the model (schedule, early stopping, best "
        "epoch); never fitted.",
    )
    calibration_fraction: float = Field(
        default=0.2,
        gt=0,
        lt=1,
        description="Share of rows that only calibrate the threshold and the score "
        "statistics; never fitted nor used to select the model.",
    )
    split_by: str | None = Field(
        default=None,
        description="Column that keeps related rows on one side of the split: a time column "
        "(calibration takes the latest rows, selection the ones before) or an entity column "
        "(all rows of one value on one side). Never a feature. Unset: blocks of neighbouring "
        "rows are hashed.",
    )
    split_kind: Literal["auto", "time", "entity"] = Field(
        default="auto",
        description="How split_by is read: auto = time for timestamp/date/time columns, "
        "entity otherwise.",
    )
    drop_drifting_columns: bool = Field(
        default=True,
        description="Under a time split, leave out of the features every column whose latest "
        "(calibration) rows lie outside the fit rows: a numeric one averaging outside its fit "
        "range (a month, a counter), a categorical one mostly in categories never fitted (a "
        "build id); out of range for every later record (trainer.drift). False keeps them.",
    )
    quantile: float = Field(
        default=0.99,
        gt=0,
        lt=1,
        description="Threshold = the conformal quantile (rank ceil((n+1)q)) of calibration "
        "scores; a normal record exceeds it with probability at most 1-q.",
    )
    target_fpr: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Alternative to quantile: the false-alarm rate to aim for on normal "
        "records (quantile = 1 - target_fpr).",
    )
    seed: int = Field(default=0, description="Seed of the split, initialisation and shuffling.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto = CUDA when present."
    )
    mixed_precision: bool = Field(
        default=True,
        description="Train under autocast: on CUDA bfloat16 (or float16 with loss scaling); on "
        "CPUs with native bfloat16 (AVX512_BF16/AMX) bfloat16 for models of 100k+ weights, "
        "else float32. Thresholds are always computed in float32.",
    )
    checkpoint_dir: str | None = Field(
        default=None,
        description="Save a checkpoint every epoch here; a rerun with the same data and "
        "settings resumes from it. Removed once the model is published.",
    )
    progress: Literal["auto", "bar", "log"] = Field(
        default="auto", description="auto: progress bars on a terminal, log lines otherwise."
    )
    # announcing
    announce_topic: str | None = Field(
        default=None,
        description="Kafka topic to announce each published version on (workers reload at "
        "once); unset: no announcement.",
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)

    @field_validator(
        "ignore_columns", "categorical_columns", "numeric_columns", "entities", mode="before"
    )
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("hidden_dims", mode="before")
    @classmethod
    def _csv_ints(cls, value: Any) -> Any:
        value = _split_csv(value)
        if isinstance(value, list):
            return [int(v) for v in value]
        return value

    @model_validator(mode="after")
    def _one_threshold_rule(self) -> TrainerSettings:
        if self.target_fpr is not None and "quantile" in self.model_fields_set:
            raise ValueError("give quantile or target_fpr, not both")
        if self.validation_fraction + self.calibration_fraction >= 1:
            raise ValueError(
                f"validation_fraction + calibration_fraction must leave rows to fit "
                f"(got {self.validation_fraction} + {self.calibration_fraction})"
            )
        if self.shuffled_negatives and self.entity_column:
            raise ValueError(
                "shuffled_negatives trains one model over all rows; it is not available "
                f"with per-entity models (entity_column={self.entity_column!r})"
            )
        if self.split_by is not None and self.split_by == self.entity_column:
            raise ValueError(
                f"split_by ({self.split_by!r}) is the entity column: each entity's rows "
                "would all land in one part; split entity models by time, or leave it unset"
            )
        return self

    @property
    def threshold_quantile(self) -> float:
        """The quantile the threshold is taken at: 1 - target_fpr when that is given."""
        return 1 - self.target_fpr if self.target_fpr is not None else self.quantile

    @field_validator("entities", "base_version")
    @classmethod
    def _need_entity_column(cls, value: Any, info: ValidationInfo) -> Any:
        if value and not info.data.get("entity_column"):
            raise ValueError("only with an entity column (--entity-column)")
        return value

    @field_validator("score")
    @classmethod
    def _elbo_needs_vae(cls, value: str, info: ValidationInfo) -> str:
        model = info.data.get("model")
        if value == "elbo" and model != "vae":
            raise ValueError(f"score=elbo needs model=vae (got model={model})")
        return value


def load_trainer_settings(**overrides: Any) -> TrainerSettings:
    """Settings from env/.env with CLI overrides; ConfigError names the bad field."""
    clean = {k: v for k, v in overrides.items() if v is not None and v != ()}
    try:
        return TrainerSettings(**clean)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, "TRAINER_", TrainerSettings)) from exc
