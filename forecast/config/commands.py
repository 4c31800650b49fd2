"""Schemas of each command's own keys (those that build nothing); `COMMANDS` maps a command to its
schema. `cross_check(plain)` then checks what lies outside the config: a run or model to start
from, an exchange calendar, a backbone config file."""
from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from forecast.config.parts import Name, NonNegInt, PosInt
from forecast.errors import ConfigError

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class Command(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @classmethod
    def cross_check(cls, plain: dict) -> None:
        """References to things outside the config; nothing by default."""


def _known(names: list[str], known: list[str], what: str) -> list[str]:
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; known: {known}")
    return names


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Name
    alias: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")]


class Train(Command):
    model_config = ConfigDict(extra="allow", populate_by_name=True)  # groups (data, model, ...): as parts
    modalities: list[Name]
    seed: NonNegInt
    run_name: str | None = None
    register_: bool = Field(False, alias="register")
    registry: Registry | None = None
    resume: Name | None = None
    init_from: Name | None = None
    freeze: list[Name] = []
    baselines: list[Name] = []
    calibrate: Literal["none", "slope", "shrink", "shrink_mean", "shrink_drift"] = "none"
    quantile_adapt: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, names: list[str]) -> list[str]:
        from forecast.data.market import known_modalities

        if not names:
            raise ValueError("is empty; give at least price")
        return _known(names, known_modalities(), "modalities")

    @field_validator("freeze")
    @classmethod
    def _freeze(cls, names: list[str]) -> list[str]:
        from forecast.training.transfer import PARTS

        return _known(names, list(PARTS), "parts")

    @field_validator("baselines")
    @classmethod
    def _baselines(cls, names: list[str]) -> list[str]:
        from forecast.evaluation.baselines import BASELINES, FITTED

        return _known(names, [*BASELINES, *FITTED], "baselines")

    @classmethod
    def cross_check(cls, plain: dict) -> None:
        uri = plain["logger"]["tracking_uri"]
        sources = [key for key in ("init_from", "resume") if plain.get(key) and plain[key] != "last"]
        if not uri.startswith(("http://", "https://")) and not sources:
            return  # nothing to look up: mlflow is not even imported
        from forecast.tracking.runs import check_reachable, check_source

        check_reachable(uri, "logger.tracking_uri")
        for key in sources:
            check_source(uri, str(plain[key]), key)


class WalkForward(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: date | None = None
    end: date | None = None
    retrain_every: PosInt = 504
    val_sessions: PosInt = 504
    train_sessions: PosInt | None = None
    embargo: NonNegInt = 0
    baselines: list[Name] = []
    backbones: list[Name] = []
    strategy: Literal["sign", "topk"] = "sign"
    top_k: PosInt = 1
    cost_bps: Annotated[float, Field(ge=0.0)] = 5.0
    ic_window: Annotated[int, Field(ge=3)] = 63
    ci: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.95
    n_boot: Annotated[int, Field(ge=10)] = 1000
    workers: PosInt | None = None

    @field_validator("baselines")
    @classmethod
    def _baselines(cls, names: list[str]) -> list[str]:
        return Train._baselines(names)

    @field_validator("backbones")
    @classmethod
    def _backbones(cls, names: list[str]) -> list[str]:
        from forecast.resources import conf_dir

        return _known(names, sorted(p.stem for p in (conf_dir() / "model" / "backbone").glob("*.yaml")), "backbones")


class Evaluate(Train):
    evaluate: WalkForward


def _calendar(code: str, key: str) -> None:
    import exchange_calendars as xcals

    if code not in xcals.get_calendar_names():
        raise ConfigError(key, f"no exchange calendar {code!r}; e.g. XNYS, XLON, XTKS, XHKG, XETR")


class Ingest(Command):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    path: Name | None = None
    store: Name
    exchange: Name = "auto"
    exchanges: list[Name] | dict[str, Name] = []
    ticker_pattern: str | None = None
    upper_tickers: bool = True
    date_format: Name | None = None
    mode: Literal["merge", "replace"] = "merge"
    max_price: Annotated[float, Field(gt=0.0)] = 1e9
    max_volume: Annotated[float, Field(gt=0.0)] = 1e15
    wait: bool = True
    incremental: bool = True
    listing: Literal["changed", "full"] = "changed"
    report: Name | None = None
    exogenous: dict = {}
    news: dict = {}

    @field_validator("ticker_pattern")
    @classmethod
    def _pattern(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                if re.compile(pattern).groups < 1:
                    raise ValueError("needs a group: group 1 of the file stem is the ticker")
            except re.error as e:
                raise ValueError(f"is not a regular expression: {e}") from None
        return pattern

    @classmethod
    def cross_check(cls, plain: dict) -> None:
        from pathlib import Path

        for key, path in [("path", plain.get("path")), ("exogenous.path", (plain.get("exogenous") or {}).get("path")),
                          ("news.path", (plain.get("news") or {}).get("path"))]:
            if path and not Path(path).exists():
                raise ConfigError(key, f"{path} does not exist")
        if plain.get("exchange") not in (None, "auto"):
            _calendar(plain["exchange"], "exchange")
        zone = (plain.get("news") or {}).get("timezone")
        if zone:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ConfigError("news.timezone", f"no time zone {zone!r}; e.g. America/New_York") from None


class Strength(BaseModel):
    model_config = ConfigDict(extra="forbid")
    price: Annotated[float, Field(ge=0.0)] = 0.08
    exogenous: Annotated[float, Field(ge=0.0)] = 0.08
    calendar: Annotated[float, Field(ge=0.0)] = 0.05
    news: Annotated[float, Field(ge=0.0)] = 0.3


Day = date  # the type, for a field named `date`


class Drift(BaseModel):
    """A planted break of the synthetic market (data_pipelines/synthetic.py)."""
    model_config = ConfigDict(extra="forbid")
    date: Day | None = None
    kind: Literal["flip", "decay", "shift"] = "flip"
    sessions: PosInt = 20
    size: Annotated[float, Field(gt=0.0)] = 3.0


class Synth(Command):
    out: Name
    tickers: PosInt = 50
    days: Annotated[int, Field(ge=30)] = 1500
    seed: NonNegInt = 0
    end: date
    exchange: Name = "XNYS"
    layout: Literal["yahoo", "stooq", "mixed"] = "yahoo"
    strength: Strength = Strength()
    news_rate: Fraction = 0.1
    split: bool = True
    dirty: Fraction = 0.0
    extras: bool = True
    drift: Drift = Drift()

    @classmethod
    def cross_check(cls, plain: dict) -> None:
        _calendar(plain["exchange"], "exchange")


class BenchBackbones(Command):
    lengths: Annotated[list[PosInt], Field(min_length=1)]
    d_model: Annotated[int, Field(ge=2)] = 128
    n_layers: PosInt = 2
    batch: PosInt = 4
    repeats: PosInt = 3
    max_seconds: Annotated[float, Field(gt=0.0)] = 30
    step_history: NonNegInt = 4096
    out: Name
    backbones: Annotated[dict[str, dict], Field(min_length=1)]
    threads: PosInt | None = None


class BenchIngest(Command):
    tickers: PosInt = 2000
    days: PosInt = 5000
    seed: NonNegInt = 0
    dirty: Fraction = 0.02
    workdir: Name
    variants: Annotated[list[Literal["polars", "pandas"]], Field(min_length=1)]
    keep: bool = False
    out: Name


class BenchCatalogue(Command):
    files: Annotated[int, Field(ge=10)] = 100_000
    rows_per_file: Annotated[int, Field(ge=4)] = 40
    years: PosInt = 5
    dirty: Fraction = 0.01
    seed: NonNegInt = 0
    changed: Annotated[float, Field(gt=0.0, le=1.0)] = 0.01
    repeats: PosInt = 3
    variants: Annotated[list[Literal["first", "reingest", "verify", "pandas"]], Field(min_length=1)]
    workdir: Name
    keep: bool = False
    out: Name | None = None

    @field_validator("variants")
    @classmethod
    def _variants(cls, names: list[str]) -> list[str]:
        if ("reingest" in names or "verify" in names) and "first" not in names:
            raise ValueError(f"{names} needs first: reingest and verify compare with the first ingest")
        return names


class BenchWide(Command):
    tickers: PosInt = 10_000
    sessions: Annotated[int, Field(ge=100)] = 2500
    seed: NonNegInt = 0
    window: Annotated[int, Field(ge=2)] = 64
    batch_size: PosInt = 1024
    train_batches: PosInt | None = 50
    data_epoch: bool = True
    threads: PosInt | None = None
    overrides: list[str] = []
    workdir: Name
    out: Name | None = None

    @classmethod
    def cross_check(cls, plain: dict) -> None:
        if plain["window"] * 3 >= plain["sessions"]:
            raise ConfigError("window", f"{plain['window']} leaves too few of {plain['sessions']} sessions to split "
                                        "into train, validation and test; use window < sessions / 3")


Port = Annotated[int, Field(ge=1, le=65535)]


class Server(Command):
    port: Port
    db_port: Port | None = None
    data_dir: Name
    backend: Literal["postgresql", "sqlite"] = "postgresql"
    host: Name = "127.0.0.1"
    expose: bool = False
    allowed_hosts: list[Name] = []
    workers: PosInt = 2
    startup_timeout: Annotated[float, Field(gt=0.0)] = 180

    @model_validator(mode="after")
    def _rules(self) -> Server:
        from forecast.tracking.server import LOOPBACK, db_port

        if self.host not in LOOPBACK and not self.expose:
            raise ValueError(f"host: {self.host} is not a loopback address, and MLflow has no authentication "
                             "unless configured: add expose=true to listen there")
        if db_port(self.model_dump()) == self.port:
            raise ValueError(f"db_port: {self.port} is MLflow's port too; choose another")
        return self

    @classmethod
    def cross_check(cls, plain: dict) -> None:
        from forecast.tracking.server import check

        check(plain)


class Compare(Command):
    logger: dict  # a part: checked by its _target_
    experiment_name: Name  # `experiment=` on the command line (forecast/__main__.py RENAMED)
    parent: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")] | None = None  # an MLflow run id
    filter: Name | None = None
    sort: Name
    order: Literal["auto", "asc", "desc"] = "auto"
    top: PosInt = 20
    params: list[Name] | None = None
    metrics: list[Name] = []
    format: Literal["table", "csv", "markdown"] = "table"

    @classmethod
    def cross_check(cls, plain: dict) -> None:
        from forecast.tracking.compare import check

        check(plain)


COMMANDS: dict[str, type[Command]] = {
    "train": Train, "evaluate": Evaluate, "ingest": Ingest, "synth": Synth,
    "bench backbones": BenchBackbones, "bench ingest": BenchIngest, "bench catalogue": BenchCatalogue,
    "bench wide": BenchWide, "server": Server, "compare": Compare,
}
