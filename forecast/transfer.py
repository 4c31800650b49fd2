"""Pre-train, then fine-tune: start a model from the weights of an earlier run or a registered model.

`init_from=<run_id>` or `init_from=models:/<name>@champion`; `freeze=[encoders,backbone]` keeps those
parts fixed. Tensors whose shape differs (e.g. a ticker embedding over another set of tickers) keep
their fresh initialisation, and the message says which.
"""
from __future__ import annotations

import mlflow
from torch import nn

from forecast.errors import ConfigError

PARTS = ("encoders", "fusion", "backbone", "head")


def source_uri(init_from: str) -> str:
    return init_from if "://" in init_from or init_from.startswith("models:/") else f"runs:/{init_from}/model"


def load_pretrained(model: nn.Module, init_from: str, freeze: list[str]) -> str:
    unknown = sorted(set(freeze) - set(PARTS))
    if unknown:
        raise ConfigError("freeze", f"unknown parts {unknown}; parts: {list(PARTS)}")
    source = mlflow.pytorch.load_model(source_uri(init_from), map_location="cpu").state_dict()
    own = model.state_dict()
    loaded = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(k for k in own if k not in loaded)
    model.load_state_dict(loaded, strict=False)
    for part in freeze:
        for p in getattr(model, part).parameters():
            p.requires_grad_(False)
    frozen = f", frozen: {freeze}" if freeze else ""
    return (f"init_from {init_from}: loaded {len(loaded)}/{len(own)} tensors"
            + (f", kept fresh: {skipped}" if skipped else "") + frozen)
