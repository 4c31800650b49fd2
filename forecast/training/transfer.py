"""Pre-train, then fine-tune: start a model from the weights of an earlier run or a registered model.

`init_from=<run_id>` or `init_from=models:/<name>@champion`; `freeze=[encoders,backbone]` keeps those
parts fixed. Tensors whose shape differs (e.g. a ticker embedding over another set of tickers) keep
their fresh initialisation, and the message says which. The source model is loaded by
forecast/tracking/runs.py (`load_model`).
"""
from __future__ import annotations

from torch import nn

from forecast.errors import ConfigError

PARTS = ("encoders", "fusion", "backbone", "head")


def check_freeze(freeze: list[str]) -> None:
    unknown = sorted(set(freeze) - set(PARTS))
    if unknown:
        raise ConfigError("freeze", f"unknown parts {unknown}; parts: {list(PARTS)}")


def load_pretrained(model: nn.Module, source: nn.Module, name: str, freeze: list[str]) -> str:
    """Copy `source`'s tensors of matching name and shape into `model`; freeze the `freeze` parts.
    Seed ensembles (forecast/model/ensemble.py) go member by member: an ensemble source of as many
    members gives member i to member i, any other source its (first) network to every member."""
    check_freeze(freeze)
    targets = list(getattr(model, "members", [model]))
    sources = list(getattr(source, "members", [source]))
    if len(sources) != len(targets):
        sources = [sources[0]] * len(targets)
    loaded, total, skipped = 0, 0, set()
    for target, src in zip(targets, sources):
        weights, own = src.state_dict(), target.state_dict()
        match = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
        target.load_state_dict(match, strict=False)
        loaded, total = loaded + len(match), total + len(own)
        skipped |= {k for k in own if k not in match}
        for part in freeze:
            for p in getattr(target, part).parameters():
                p.requires_grad_(False)
    frozen = f", frozen: {freeze}" if freeze else ""
    return (f"init_from {name}: loaded {loaded}/{total} tensors"
            + (f", kept fresh: {sorted(skipped)}" if skipped else "") + frozen)
