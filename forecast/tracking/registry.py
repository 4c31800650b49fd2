"""Model registry: register a run's model and move the alias (`champion`) only when it is better.

"Better" is a lower validation loss (`val/best_loss` of the run), never a test metric. Losses are in
units of the training target's standard deviation, so compare runs on the same data configuration.
A compressed model (`compress`) is registered with `register`: it met its device's budget, and its
alias (the device) moves to it.
"""
from __future__ import annotations

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient


def champion_loss(client: MlflowClient, name: str, alias: str) -> tuple[str | None, float]:
    """(version, val/best_loss) of the model version holding `alias`, or (None, inf)."""
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None, float("inf")
    return mv.version, client.get_run(mv.run_id).data.metrics.get("val/best_loss", float("inf"))


def promote(name: str, alias: str, run_id: str, model_uri: str, val_loss: float) -> str:
    """Register `model_uri` as a new version of `name`; give it `alias` if it beats the holder."""
    client = MlflowClient()
    held_by, held_loss = champion_loss(client, name, alias)
    mv = mlflow.register_model(model_uri, name, tags={"run_id": run_id, "val/best_loss": f"{val_loss:.6g}"})
    if val_loss < held_loss:
        client.set_registered_model_alias(name, alias, mv.version)
        return f"registered {name} v{mv.version}: now @{alias} (val loss {val_loss:.6g} < {held_loss:.6g})"
    return (f"registered {name} v{mv.version}; @{alias} stays on v{held_by} "
            f"(val loss {val_loss:.6g} >= {held_loss:.6g})")


def register(name: str, alias: str, model_uri: str, tags: dict[str, str]) -> str:
    """Register `model_uri` as a new version of `name` and move `alias` to it."""
    mv = mlflow.register_model(model_uri, name, tags=tags)
    MlflowClient().set_registered_model_alias(name, alias, mv.version)
    return f"registered {name} v{mv.version}: now @{alias}"
