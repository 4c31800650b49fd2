"""Schemas of the daily-prediction commands' own keys (predict, schedule, bench predict); the model,
store and database they name are checked by the commands themselves before anything is written."""
from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from forecast.config.commands import Command
from forecast.config.parts import Name, NonNegInt, PosInt


class PredictData(BaseModel):
    model_config = ConfigDict(extra="forbid")
    store: Name | None = None


class Predictions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: Annotated[str, Field(pattern=r"^[a-z][a-z0-9+]*://")]


class Predict(Command):
    model_config = ConfigDict(extra="allow")  # logger: checked as a part
    model_ref: Name
    date: dt.date | Literal["today"] = "today"
    catch_up: bool = False
    since: dt.date | None = None
    data: PredictData = PredictData()
    predictions: Predictions
    batch_size: PosInt = 512
    show: NonNegInt = 20
    perf_file: Name | None = None

    @field_validator("date", "since", mode="before")
    @classmethod
    def _day(cls, value: object) -> object:
        if value is None or value == "today" or isinstance(value, dt.date):
            return value
        try:
            return dt.date.fromisoformat(str(value))
        except ValueError:
            raise ValueError(f"{value!r} is not a date: use YYYY-MM-DD (or today for date)") from None

    @field_validator("model_ref")
    @classmethod
    def _uri(cls, ref: str) -> str:
        if "://" in ref and not ref.startswith(("models:/", "runs:/")):
            raise ValueError("must be models:/<name>@<alias>, models:/<name>/<version>, runs:/<id> or a run id")
        return ref


class Timing(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delay: Name = "30min"
    exchange: Name | None = None
    at_start: bool = True
    max_runs: PosInt | None = None
    monitor: bool = False

    @field_validator("delay")
    @classmethod
    def _duration(cls, delay: str) -> str:
        import pandas as pd

        try:
            if pd.Timedelta(delay) < pd.Timedelta(0):
                raise ValueError("must not be negative")
        except ValueError as e:
            raise ValueError(f"is not a duration such as 30min or 1h ({e})") from None
        return delay


class Schedule(Predict):
    schedule: Timing


class BenchPredict(Command):
    tickers: PosInt = 500
    days: Annotated[int, Field(ge=100)] = 400
    seed: NonNegInt = 0
    repeats: PosInt = 3
    workdir: Name
    out: Name


COMMANDS: dict[str, type[Command]] = {"predict": Predict, "schedule": Schedule, "bench predict": BenchPredict}
