"""Schemas of the parts configs build (`_target_`), one per constructor: the keys it takes, their
types, ranges and choices. `PARTS` maps each target to its schema; a target without one (a user's
own class) is checked by its constructor, whose error the CLI reports under the part's key."""
from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from forecast.errors import ConfigError

PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
Dropout = Annotated[float, Field(ge=0.0, lt=1.0)]
Name = Annotated[str, Field(min_length=1)]


class Part(BaseModel):
    """Every key the constructor takes, nothing else (a misspelt `+key` is caught here)."""

    model_config = ConfigDict(extra="forbid")


class Open(BaseModel):
    """A part of another library (Lightning, torch): the keys that matter checked, others passed on."""

    model_config = ConfigDict(extra="allow")


# --- data -------------------------------------------------------------------------------------------

class MarketData(Part):
    store: Name
    tickers: list[Name] | Name | int | None = None
    window: Annotated[int, Field(ge=2)] = 64
    horizon: PosInt = 1
    purge: NonNegInt | None = None
    label: Literal["raw", "cs_demean", "cs_zscore"] = "raw"
    val_start: date | None = None
    test_start: date | None = None
    val_frac: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.15
    test_frac: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.15
    modalities: list[Name] = ["price"]
    exog_level_window: Annotated[int, Field(ge=4)] | None = None
    batch_size: PosInt = 128
    seed: int = 0
    num_workers: NonNegInt = 0
    train_start: date | None = None
    test_end: date | None = None
    shard_tickers: bool = False

    @field_validator("tickers")
    @classmethod
    def _tickers(cls, tickers):
        if isinstance(tickers, list) and not tickers:
            raise ValueError("is empty; give tickers or null for every ticker of the store")
        if isinstance(tickers, list) and len(set(map(str, tickers))) < len(tickers):
            raise ValueError(f"lists a ticker twice: {tickers}")
        return tickers

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, modalities: list[str]) -> list[str]:
        from forecast.data.market import known_modalities

        unknown = sorted(set(modalities) - set(known_modalities()))
        if unknown or not modalities:
            raise ValueError(f"unknown or empty: {unknown or modalities}; known: {known_modalities()}")
        return modalities

    @model_validator(mode="after")
    def _consistent(self):
        if self.purge is not None and self.purge < self.horizon:
            raise ValueError(f"purge: must be >= horizon ({self.horizon}) so labels never overlap, got {self.purge}")
        if self.val_frac + self.test_frac >= 1:
            raise ValueError(f"val_frac: val_frac + test_frac must be < 1, got {self.val_frac} + {self.test_frac}")
        if self.val_start and self.test_start and self.val_start >= self.test_start:
            raise ValueError(f"val_start: must be before test_start, got {self.val_start} >= {self.test_start}")
        return self

    def check_references(self) -> None:
        """The store exists and holds the tickers (the CLI checks this before any work; MarketData
        itself only when it reads the store)."""
        from data_pipelines.store import read_manifest
        from forecast.data.market import find_stores

        if not (Path(self.store) / "manifest.parquet").exists():
            raise ConfigError("store", f"no store at {self.store}; stores found: {find_stores() or 'none'} "
                                       "(build one with `python -m forecast ingest path=<files> store=<dir>`)")
        if isinstance(self.tickers, list):
            have = set(read_manifest(self.store)["ticker"].to_list())
            missing = sorted({str(t) for t in self.tickers} - have)
            if missing:
                raise ConfigError("tickers", f"{missing} not in store {self.store}; it has "
                                             f"{sorted(have)[:20]}{' ...' if len(have) > 20 else ''}")


# --- model ------------------------------------------------------------------------------------------

class Forecaster(Part):
    d_model: Annotated[int, Field(ge=2)]
    ensemble: PosInt = 1  # members of a seed ensemble (forecast/model/ensemble.py)
    modalities: list[Name]
    encoders: dict
    fusion: dict
    backbone: dict
    head: dict
    optimizer: dict
    scheduler: dict | None = None

    @model_validator(mode="after")
    def _used_encoders_exist(self):
        unknown = sorted(set(self.modalities) - set(self.encoders))
        if unknown or not self.modalities:
            raise ValueError(f"modalities: unknown or empty: {unknown or self.modalities}; "
                             f"encoders: {sorted(self.encoders)}")
        return self


class Backbone(Part):
    d_model: Annotated[int, Field(ge=2)]
    n_layers: PosInt = 2
    dropout: Dropout = 0.0


class Scan(Backbone):
    d_state: PosInt = 16
    d_conv: PosInt = 4
    expand: PosInt = 2
    chunk: PosInt = 64
    impl: Literal["auto", "torch", "cpu", "cuda"] = "auto"


class Mamba2(Scan):
    headdim: PosInt = 64
    d_state: PosInt = 64

    @model_validator(mode="after")
    def _heads(self):
        if (self.expand * self.d_model) % self.headdim:
            raise ValueError(f"headdim: expand*d_model={self.expand * self.d_model} is not divisible by "
                             f"headdim={self.headdim}")
        return self


class Attention(Backbone):
    n_heads: PosInt = 4
    mlp_ratio: Annotated[float, Field(gt=0.0)] = 4.0

    @model_validator(mode="after")
    def _heads(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads: d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        return self


class LinearAttention(Attention):
    decay: Literal["none", "fixed", "gate"] = "gate"
    chunk: PosInt = 64


class Encoder(Part):
    dropout: Dropout = 0.0


class HiddenEncoder(Encoder):
    hidden: NonNegInt = 64


class NewsEncoder(Encoder):
    n_buckets: PosInt = 16384
    d_embed: PosInt = 64


class TickerEncoder(Part):
    init_std: Annotated[float, Field(gt=0.0)] = 0.02


class Fusion(Part):
    d_model: Annotated[int, Field(ge=2)]
    modality_dropout: Dropout = 0.0
    keep: list[Name] = ["price"]


class FiLMFusion(Fusion):
    condition: Name = "ticker"


class PointHead(Part):
    d_model: Annotated[int, Field(ge=2)]
    dropout: Dropout = 0.0


class QuantileHead(PointHead):
    quantiles: list[Annotated[float, Field(gt=0.0, lt=1.0)]] = [0.1, 0.5, 0.9]

    @model_validator(mode="after")
    def _levels(self):
        if 0.5 not in self.quantiles or len(set(self.quantiles)) != len(self.quantiles):
            raise ValueError(f"quantiles: distinct levels including 0.5 (the point forecast), got {self.quantiles}")
        return self


class FactorHead(PointHead):
    n_factors: PosInt = 4
    shared: list[Name] = ["calendar", "exogenous"]
    loading: Name = "ticker"
    exclusive: bool = False


class Optimizer(Open):
    lr: Annotated[float, Field(gt=0.0)]
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0


# --- training and tracking --------------------------------------------------------------------------

Limit = Annotated[int, Field(ge=1)] | Annotated[float, Field(gt=0.0, le=1.0)]


class Trainer(Open):
    accelerator: Literal["cpu", "gpu", "cuda", "mps", "auto"] = "auto"
    devices: PosInt | Literal["auto"] | list[NonNegInt] = "auto"
    max_epochs: Annotated[int, Field(ge=1)] | Literal[-1] | None = None
    gradient_clip_val: Annotated[float, Field(ge=0.0)] | None = None
    log_every_n_steps: PosInt = 50
    deterministic: bool | Literal["warn"] | None = None
    limit_train_batches: Limit | None = None
    limit_val_batches: Limit | None = None
    default_root_dir: Name | None = None


class ModelCheckpoint(Open):
    monitor: Name | None = None
    mode: Literal["min", "max"] = "min"


class EarlyStopping(Open):
    monitor: Name
    mode: Literal["min", "max"] = "min"
    patience: NonNegInt = 3


class StepSeed(Part):
    seed: int


SCHEMES = ("sqlite:///", "http://", "https://", "file:", "postgresql://", "postgresql+psycopg2://", "databricks")


class RunLogger(Open):
    tracking_uri: Name
    experiment_name: Name

    @field_validator("tracking_uri")
    @classmethod
    def _scheme(cls, uri: str) -> str:
        if not uri.startswith(SCHEMES):
            raise ValueError(f"must start with one of {list(SCHEMES)}")
        return uri


PARTS: dict[str, type[BaseModel]] = {
    "forecast.data.market.MarketData": MarketData,
    "forecast.model.forecaster.Forecaster": Forecaster,
    "forecast.model.backbones.mamba.Mamba": Scan,
    "forecast.model.backbones.mamba2.Mamba2": Mamba2,
    "forecast.model.backbones.linear_attention.LinearAttention": LinearAttention,
    "forecast.model.backbones.transformer.Transformer": Attention,
    "forecast.model.backbones.lstm.LSTM": Backbone,
    "forecast.model.encoders.price.PriceEncoder": Encoder,
    "forecast.model.encoders.ticker.TickerEncoder": TickerEncoder,
    "forecast.model.encoders.calendar.CalendarEncoder": HiddenEncoder,
    "forecast.model.encoders.exogenous.ExogenousEncoder": HiddenEncoder,
    "forecast.model.encoders.news.NewsEncoder": NewsEncoder,
    "forecast.model.encoders.news.SentenceNewsEncoder": Encoder,
    "forecast.model.fusion.SumFusion": Fusion,
    "forecast.model.fusion.ConcatFusion": Fusion,
    "forecast.model.fusion.GatedFusion": Fusion,
    "forecast.model.fusion.FiLMFusion": FiLMFusion,
    "forecast.model.heads.PointHead": PointHead,
    "forecast.model.heads.FactorHead": FactorHead,
    "forecast.model.heads.QuantileHead": QuantileHead,
    "torch.optim.AdamW": Optimizer,
    "torch.optim.Adam": Optimizer,
    "torch.optim.SGD": Optimizer,
    "lightning.pytorch.Trainer": Trainer,
    "lightning.pytorch.callbacks.ModelCheckpoint": ModelCheckpoint,
    "lightning.pytorch.callbacks.EarlyStopping": EarlyStopping,
    "forecast.training.checkpoint.StepSeed": StepSeed,
    "forecast.tracking.logger.RunLogger": RunLogger,
    "lightning.pytorch.loggers.MLFlowLogger": RunLogger,
}
