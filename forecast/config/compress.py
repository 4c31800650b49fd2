"""Schema of `compress`'s own keys: the teacher, the device profile (conf/device/), the budgets and
the search's space; the teacher and the store it names are checked before anything is trained."""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from forecast.config.commands import Command, Fraction, WalkForward
from forecast.config.parts import Name, NonNegInt, PosInt
from forecast.errors import ConfigError


class DeviceProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    threads: PosInt | None = None
    ram_mb: PosInt | None = None
    isa: Name | None = None
    vnni: bool | None = None
    tickers: PosInt = 50
    latency_ms: Annotated[float, Field(gt=0.0)] | None = None
    size_mb: Annotated[float, Field(gt=0.0)] | None = None


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size_ratio: Annotated[float, Field(gt=0.0)] | None = None
    speedup: Annotated[float, Field(gt=0.0)] | None = None
    ic_ratio: Annotated[float, Field(gt=0.0, le=1.5)] | None = None


class Student(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: Annotated[int, Field(ge=2)] | None = None
    depth: PosInt | None = None
    backbone: Name | None = None

    @field_validator("backbone")
    @classmethod
    def _backbone(cls, name: str | None) -> str | None:
        return name if name is None else WalkForward._backbones([name])[0]


class CompressSearch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    int8: bool = True
    prune: list[Annotated[float, Field(gt=0.0, lt=1.0)]] = []
    students: list[Student] = []
    prune_students: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    epochs: PosInt = 4
    finetune_epochs: PosInt = 2
    alpha: Fraction = 0.5
    exhaustive: bool = False


class Latency(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repeats: Annotated[int, Field(ge=5)] = 50
    warmup: NonNegInt = 5


class CompressRegistry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Name
    alias: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")] | None = None


class Compress(Command):
    """`compress`: the teacher, the device profile (conf/device/), budgets and the search's space."""
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    logger: dict
    device: DeviceProfile
    model_ref: Name  # `model=` on the command line (renamed by the CLI: conf/model/ is a config group)
    run_name: str | None = None
    data: dict = {}
    budget: Budget = Budget()
    search: CompressSearch = CompressSearch()
    latency: Latency = Latency()
    progress: bool = True
    out: Name
    cache: Name | None = None
    register_: bool = Field(True, alias="register")
    registry: CompressRegistry

    @classmethod
    def cross_check(cls, plain: dict) -> None:
        check_trained_source(plain)


def check_trained_source(plain: dict) -> None:
    """A command that reads a trained model: its tracking store answers, the model is there, and a
    `data.store` override names a store."""
    from pathlib import Path

    from forecast.tracking.runs import check_reachable, check_source

    check_reachable(plain["logger"]["tracking_uri"], "logger.tracking_uri")
    check_source(plain["logger"]["tracking_uri"], str(plain["model_ref"]), "model")
    store = (plain.get("data") or {}).get("store")
    if store and not (Path(store) / "manifest.parquet").exists():
        raise ConfigError("data.store", f"no store at {store}")


COMMANDS: dict[str, type[Command]] = {"compress": Compress}
