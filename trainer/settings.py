"""Trainer settings: env vars with prefix ``TRAINER_`` (and ``.env``), overridable by CLI flags.

Every field is documented in README "Configuration". A bad value fails at start, naming the
env var.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pipeline.exceptions import ConfigError
from pipeline.models import Activation, ModelKind, Norm
from pipeline.settings import describe_validation_error


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
    data: str | None = Field(default=None, description="Parquet file, directory, glob or URL")
    id_column: str | None = None
    label_column: str | None = Field(default=None, description="never used for fitting")
    ignore_columns: Annotated[list[str], NoDecode] = Field(default_factory=list)
    categorical_columns: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_categories: int = Field(default=50, ge=1, le=100_000)
    missing: Literal["impute", "reject"] = "impute"
    read_batch_rows: int = Field(default=65_536, gt=0)
    # publishing
    model_store: str = Field(default="model-store", min_length=1)
    name: str = Field(default="default", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    # architecture
    model: ModelKind = "ae"
    hidden_dims: Annotated[list[int], NoDecode] | None = Field(
        default=None, description="default: sized from the input width"
    )
    latent_dim: int | None = Field(default=None, gt=0)
    activation: Activation = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    norm: Norm = "none"
    beta: float = Field(default=1.0, ge=0.0)
    noise: Literal["gaussian", "mask"] = "gaussian"
    noise_level: float = Field(default=0.1, ge=0.0)
    # optimisation
    epochs: int = Field(default=50, ge=1)
    batch_size: int = Field(default=256, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    patience: int = Field(default=5, ge=1, description="early stopping: epochs without gain")
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    quantile: float = Field(default=0.99, gt=0, lt=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    memory_budget_mb: int = Field(default=1024, gt=0, description="cache data in RAM below this")

    @field_validator("ignore_columns", "categorical_columns", mode="before")
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


def load_trainer_settings(**overrides: Any) -> TrainerSettings:
    """Settings from env/.env with CLI overrides; ConfigError names the bad field."""
    clean = {k: v for k, v in overrides.items() if v is not None and v != ()}
    try:
        return TrainerSettings(**clean)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, prefix="TRAINER_")) from exc
