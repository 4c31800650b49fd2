"""Schema of `specialise`'s own keys: the full model, the specialists (conf/specialist/), the router
(conf/router/), the dense student, the curve and the latency measurement; the full model and the
store it names are checked before anything is trained."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from forecast.config.commands import Command, Fraction
from forecast.config.compress import CompressRegistry, Student, check_trained_source
from forecast.config.parts import Name, NonNegInt, PosInt

Open01 = Annotated[float, Field(gt=0.0, lt=1.0)]


class NoNewsSlice(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    target: Literal["forecast.compress.route.NoNews"] = Field(alias="_target_")
    invert: bool = False


class CalmSlice(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    target: Literal["forecast.compress.route.Calm"] = Field(alias="_target_")
    quantile: Open01 = 0.7
    feature: Literal["ret", "gap", "intraday", "range", "dvol"] = "ret"


class ClusterSlice(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    target: Literal["forecast.compress.route.TickerCluster"] = Field(alias="_target_")
    k: Annotated[int, Field(ge=2)] = 4
    cluster: NonNegInt = 0

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, v: int, info) -> int:
        if v >= info.data.get("k", 4):
            raise ValueError(f"must be below k ({info.data.get('k')})")
        return v


class Specialist(Student):
    """A student (compress's: width, depth, backbone) of one slice of requests, without `drop`."""
    slice: Annotated[NoNewsSlice | CalmSlice | ClusterSlice, Field(union_mode="left_to_right")]
    drop: list[Name] = []


class RouterConf(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    target: Literal["forecast.compress.route.Router"] = Field(alias="_target_")
    threshold: Literal["auto"] | Open01 = "auto"
    tolerance: Annotated[float, Field(gt=0.0)] = 0.25
    min_corr: Annotated[float, Field(gt=-1.0, le=1.0)] = 0.97
    max_ic_drop: Annotated[float, Field(ge=0.0)] = 0.003
    range_quantile: Annotated[float, Field(gt=0.0, le=1.0)] = 0.999
    alert_sessions: PosInt = 20


class Dense(BaseModel):
    model_config = ConfigDict(extra="forbid")
    depth: PosInt = 1
    widths: list[Annotated[int, Field(ge=2)]] = []  # empty: no dense student


class Latency(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    threads: PosInt = 1
    repeats: Annotated[int, Field(ge=5)] = 50
    warmup: NonNegInt = 5


class Specialise(Command):
    """`specialise`: the full model, specialists, router, dense student, curve and latency."""
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    logger: dict
    model_ref: Name  # `model=` on the command line (renamed by the CLI: conf/model/ is a config group)
    run_name: str | None = None
    data: dict = {}
    specialists: Annotated[dict[Name, Specialist], Field(min_length=1)]
    router: RouterConf
    epochs: PosInt = 4
    alpha: Fraction = 0.5
    dense: Dense
    curve: list[Open01] = []
    latency: Latency = Latency()
    out: Name
    register_: bool = Field(True, alias="register")
    registry: CompressRegistry

    @classmethod
    def cross_check(cls, plain: dict) -> None:
        check_trained_source(plain)


COMMANDS: dict[str, type[Command]] = {"specialise": Specialise}
