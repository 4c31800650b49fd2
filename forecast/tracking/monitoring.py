"""What `monitor` writes to MLflow: one monitoring run per model version (in the experiment of the
model's training run, tagged `forecast.monitor=<model>/<version>`), whose metrics are stepped by
session (step: the session's index in the monitored series; timestamp: the session's close date, so
the UI's time axis is market time), plus a plot of rolling IC with the validation-period IC as a
reference line; and the champion/challenger decision of a retrain.

Idempotent: only sessions after the run's tag `forecast.monitor.last_session` are logged.
"""
from __future__ import annotations

import datetime as dt
import math

import mlflow
import polars as pl
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

TAG, LAST = "forecast.monitor", "forecast.monitor.last_session"
METRICS = ("ic", "rank_ic", "ic_20", "ic_60", "icir_60", "hit", "net")


def monitoring_run(client: MlflowClient, model: str, version: str, model_run_id: str) -> str:
    """The monitoring run of this model version, created on first use."""
    experiment_id = client.get_run(model_run_id).info.experiment_id
    found = client.search_runs([experiment_id], f"tags.`{TAG}` = '{model}/{version}'", max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"monitor {model} v{version}",
                            tags={TAG: f"{model}/{version}", "forecast.model_run": model_run_id})
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def describe(tracking_uri: str, run_id: str, text: str) -> None:
    """The monitoring run's description (the UI's Overview): the last line monitor printed, then all
    of it (the alerts and the rolling IC)."""
    from forecast.tracking.review import DESCRIPTION

    MlflowClient(tracking_uri).set_tag(run_id, DESCRIPTION, f"**monitor**: {text.splitlines()[-1]}\n\n```\n{text}\n```")


def validation_ic(client: MlflowClient, run_id: str) -> float:
    return client.get_run(run_id).data.metrics.get("val/best_ic", math.nan)


def log_scores(tracking_uri: str, model: str, version: str, model_run_id: str, scores: pl.DataFrame) -> str:
    """Log the sessions of `scores` (date, ic, ...) not logged yet, and the rolling-IC plot; the run id."""
    client = MlflowClient(tracking_uri)
    run_id = monitoring_run(client, model, version, model_run_id)
    last = client.get_run(run_id).data.tags.get(LAST)
    indexed = scores.with_row_index("step")
    new = indexed.filter(pl.col("date") > dt.date.fromisoformat(last)) if last else indexed
    if new.height == 0:
        return run_id
    metrics = []
    for row in new.iter_rows(named=True):
        ms = int(dt.datetime.combine(row["date"], dt.time(21), dt.timezone.utc).timestamp() * 1000)
        metrics += [Metric(f"monitor/{k}", float(row[k]), ms, int(row["step"]))
                    for k in METRICS if row.get(k) is not None and math.isfinite(row[k])]
    for i in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    client.log_figure(run_id, rolling_plot(scores, validation_ic(client, model_run_id)), "plots/rolling_ic.png")
    client.set_tag(run_id, LAST, str(new["date"][-1]))
    return run_id


def rolling_plot(scores: pl.DataFrame, val_ic: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.5))
    for col in ("ic_20", "ic_60"):
        ax.plot(scores["date"].to_list(), scores[col].to_list(), label=f"rolling IC ({col[3:]} sessions)")
    if math.isfinite(val_ic):
        ax.axhline(val_ic, color="grey", linestyle="--", label=f"validation IC {val_ic:.3f}")
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.set_ylabel("IC")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def challenger_run(tracking_uri: str, run_name: str) -> str:
    """The id of the newest run named `run_name` (the challenger `train` just logged)."""
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.`mlflow.runName` = '{run_name}'", order_by=["attributes.start_time DESC"],
                              max_results=1)
    if not runs:
        raise MlflowException(f"no run named {run_name!r}")
    return runs[0].info.run_id


def decide(tracking_uri: str, name: str, alias: str, challenger: str, challenger_ic: float, champion_ic: float,
           promoted: bool) -> str | None:
    """Register the challenger as a version of `name`; move `alias` to it when `promoted`. Both ICs are
    logged on the challenger's run. Returns the new version."""
    client = MlflowClient(tracking_uri)
    client.log_batch(challenger, metrics=[Metric("retrain/challenger_ic", challenger_ic, 0, 0),
                                          Metric("retrain/champion_ic", champion_ic, 0, 0)])
    client.set_tag(challenger, "forecast.retrain", "promoted" if promoted else "kept")
    if not promoted:
        return None
    mlflow.set_tracking_uri(tracking_uri)
    uri = client.get_run(challenger).data.tags["forecast.pyfunc_uri"]
    mv = mlflow.register_model(uri, name, tags={"run_id": challenger, "retrain": "challenger"})
    client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)
