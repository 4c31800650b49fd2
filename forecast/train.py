"""train(cfg): seed; build data, model, trainer and logger from config; fit; forecast the test split;
score it beside the naive baselines; log everything to one MLflow run; return the validation loss
(what a sweeper optimises: never a test metric)."""
from __future__ import annotations

import math
import os
import sys
import time

import lightning as L
import mlflow
import polars as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from forecast.baselines import baseline_predictions, check_names
from forecast.checkpoint import AtomicCheckpointIO, ResumedMLFlowLogger, resume_target
from forecast.errors import ConfigError
from forecast.metrics import flat_metrics, point_metrics
from forecast.registry import promote
from forecast.sweep import PARENT_RUN_ENV
from forecast.tracking import flatten, log_artifacts, log_config
from forecast.transfer import load_pretrained


def train(cfg: DictConfig) -> float:
    mlflow.set_tracking_uri(cfg.logger.tracking_uri)
    run_id, ckpt = None, None
    if cfg.get("resume"):
        experiment = mlflow.set_experiment(cfg.logger.experiment_name)
        run_id, ckpt = resume_target(MlflowClient(), experiment.experiment_id, str(cfg.resume),
                                     cfg.trainer.default_root_dir)
        cfg = stored_config(run_id, cfg)
    check_names(cfg.get("baselines", []), "baselines")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = build_data(cfg)  # user errors surface here, before any tracking store is created
    model = instantiate(cfg.model, dims=dm.dims)
    experiment = mlflow.set_experiment(cfg.logger.experiment_name)
    if cfg.get("init_from") and ckpt is None:
        print(load_pretrained(model, str(cfg.init_from), list(cfg.get("freeze") or [])))
    if os.environ.get("LOCAL_RANK", "0") != "0":  # a DDP worker: it trains, rank 0 logs and tests
        fit(cfg, dm, model, None, None)
        return math.nan
    parent = os.environ.get(PARENT_RUN_ENV)
    with mlflow.start_run(run_id=run_id, run_name=cfg.get("run_name"),
                          tags={"mlflow.parentRunId": parent} if parent and not run_id else None) as run:
        if ckpt is None:
            log_config(cfg, dm)
        trainer, ckpt_fraction = fit(cfg, dm, model, run.info.run_id, ckpt)
        val_loss = load_best(trainer, model)
        frame = with_baselines(dm.predictions_frame("test", predict(model, dm)), dm, list(cfg.get("baselines", [])))
        results = score(frame)
        metrics = {**flat_metrics(results), "val/best_loss": val_loss, "perf/checkpoint_fraction": ckpt_fraction}
        mlflow.log_metrics({k: v for k, v in metrics.items() if not math.isnan(v)})
        info = log_artifacts(frame, model, dm)
        if cfg.get("register") and not parent:  # in a sweep, forecast.sweep registers the best trial
            print(promote(MlflowClient(), cfg.logger.registered_model, cfg.logger.alias, run.info.run_id,
                          info.model_uri, val_loss))
    finish(cfg, experiment.experiment_id, run.info.run_id, results)
    return val_loss


def build_data(cfg: DictConfig):
    dm = instantiate(cfg.data)
    try:
        dm.setup()
    except ConfigError as e:
        raise e.within("data") from None
    return dm


def stored_config(run_id: str, cfg: DictConfig) -> DictConfig:
    """The run's own logged config, so a resumed run continues exactly what it started. Given values
    that differ from it are not applied, and are named on stderr."""
    text = mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml")
    stored = OmegaConf.create(text)
    changed = differing(stored, cfg)
    if changed:
        shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
        print(f"resume={cfg.resume}: continuing run {run_id} with its logged config; not applied: {shown}",
              file=sys.stderr)
    stored.resume = cfg.resume
    return stored


def differing(stored: DictConfig, given: DictConfig) -> list[str]:
    """'key=given (run: stored)' for every config key whose given value differs from the run's."""
    a, b = (flatten(OmegaConf.to_container(c, resolve=True)) for c in (stored, given))
    return [f"{k}={b.get(k)} (run: {a.get(k)})" for k in sorted(a.keys() | b.keys())
            if k != "resume" and a.get(k) != b.get(k)]


def fit(cfg: DictConfig, dm, model: L.LightningModule, run_id: str | None, ckpt) -> tuple[L.Trainer, float]:
    """Trainer.fit, resuming from `ckpt` when given; returns the trainer and the share of the fit
    time spent writing checkpoints."""
    io = AtomicCheckpointIO()
    logger = (MLFlowLogger if ckpt is None else ResumedMLFlowLogger)(
        experiment_name=cfg.logger.experiment_name, tracking_uri=cfg.logger.tracking_uri, run_id=run_id)
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values()]
    trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks, plugins=[io])
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm, ckpt_path=None if ckpt is None else str(ckpt))
    return trainer, io.seconds / max(time.perf_counter() - start, 1e-9)


def load_best(trainer: L.Trainer, model: L.LightningModule) -> float:
    """Load the weights of the epoch with the best validation loss; return that loss."""
    cb = trainer.checkpoint_callback
    if cb is None or not cb.best_model_path:
        return math.nan
    model.load_state_dict(torch.load(cb.best_model_path, map_location="cpu", weights_only=True)["state_dict"])
    return float(cb.best_model_score)


@torch.no_grad()
def predict(model: L.LightningModule, dm) -> torch.Tensor:
    """Forecasts for every test anchor, in order, on this process alone (also after DDP training)."""
    model.eval()
    out = [model.predict_step(batch, i) for i, batch in enumerate(dm.test_dataloader())]
    return torch.cat(out)  # (N,)


def with_baselines(frame: pl.DataFrame, dm, names: list[str]) -> pl.DataFrame:
    """The test frame with a `pred_<name>` column per baseline (forecasts of the same anchors)."""
    preds, skipped = baseline_predictions(dm.frame, names)
    for name, reason in skipped.items():
        print(f"note: baseline {name!r} skipped: {reason}")
    return frame.with_columns(**{f"pred_{n}": p for n, p in preds.items()})


def score(frame: pl.DataFrame) -> dict[str, dict[str, float]]:
    """{'model': metrics, '<baseline>': metrics} on the same test anchors."""
    names = [c.removeprefix("pred_") for c in frame.columns if c.startswith("pred_")]
    return {"model": point_metrics(frame), **{n: point_metrics(frame, f"pred_{n}") for n in names}}


def report(results: dict[str, dict[str, float]]) -> str:
    keys = list(results["model"])
    lines = [f"{'test split':<12}" + "".join(f"{k:>12}" for k in keys)]
    for name, metrics in results.items():
        lines.append(f"{name:<12}" + "".join(f"{metrics[k]:>12.6g}" for k in keys))
    best_mse = min(results, key=lambda n: results[n]["mse"])
    if best_mse != "model":
        lines.append(f"note: the model's test MSE is not better than the '{best_mse}' baseline")
    return "\n".join(lines)


def finish(cfg: DictConfig, experiment_id: str, run_id: str, results) -> None:
    uri = cfg.logger.tracking_uri
    print(report(results))
    print(f"view: mlflow ui --backend-store-uri {uri}  ->  "
          f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}")
    print(f"run_id={run_id} tracking_uri={uri}")
