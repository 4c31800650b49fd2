"""Schema of `monitor`'s own keys; the model, store and database it names are checked by the command
before anything is read or written."""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from forecast.config.commands import Command
from forecast.config.inference import Predict
from forecast.config.parts import PosInt

Positive = Annotated[float, Field(gt=0.0)]


class Detector(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delta: Annotated[float, Field(ge=0.0)] = 0.5
    threshold: Positive = 10.0
    min_instances: Annotated[int, Field(ge=2)] = 30


class InputDrift(BaseModel):
    model_config = ConfigDict(extra="forbid")
    window: PosInt = 20
    bins: Annotated[int, Field(ge=2, le=100)] = 10
    psi: Positive = 0.25
    ks_p: Annotated[float, Field(gt=0.0, lt=1.0)] = 1e-3
    z: Positive = 4.0
    min_rows: PosInt = 10


class Challenger(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train_sessions: Annotated[int, Field(ge=20)] = 40
    val_sessions: Annotated[int, Field(ge=5)] = 10
    test_sessions: Annotated[int, Field(ge=5)] = 20
    cooldown: PosInt = 20
    require_alert: bool = True
    max_epochs: PosInt = 10
    lr: Positive | None = None
    min_gain: Annotated[float, Field(ge=0.0)] = 0.02
    p_value: Annotated[float, Field(gt=0.0, le=1.0)] = 0.05


class Monitor(Predict):
    retrain: bool = False
    block: Annotated[int, Field(ge=5)] = 20
    cost_bps: Annotated[float, Field(ge=0.0)] = 5.0
    log_mlflow: bool = True
    detector: Detector = Detector()
    input: InputDrift = InputDrift()
    challenger: Challenger = Challenger()


COMMANDS: dict[str, type[Command]] = {"monitor": Monitor}
