"""train(cfg): seed; build data, model and logger from config; fit (forecast/training/fit.py); forecast
the test split; score it beside the naive baselines; log everything to one MLflow run; return the
validation loss (what a sweeper optimises: never a test metric)."""
from __future__ import annotations

import math
import os
import sys

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from forecast.errors import ConfigError
from forecast.evaluation import adaptive
from forecast.evaluation.baselines import check_names
from forecast.evaluation.calibration import Calibration, calibrated_forecasts
from forecast.evaluation.description import train_description
from forecast.evaluation.metrics import flat_metrics, rank_metrics
from forecast.evaluation.quantiles import with_head_quantiles
from forecast.evaluation.report import point_report
from forecast.evaluation.scoring import score_points, with_baselines
from forecast.model import ensemble
from forecast.tracking import registry, review, runs, serving
from forecast.tracking.sweep import PARENT_RUN_ENV, trial_tags
from forecast.training.fit import fit, forecast
from forecast.training.transfer import load_pretrained


def train(cfg: DictConfig) -> float:
    run_id, ckpt = None, None
    if cfg.get("resume"):
        run_id, ckpt = runs.resume_target(runs.connect(cfg.logger), str(cfg.resume), cfg.trainer.default_root_dir)
        cfg = stored_config(run_id, cfg)
    check_names(cfg.get("baselines", []), "baselines")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = build_data(cfg, "plan")  # user errors surface here, before anything is written to the tracking store
    model = ensemble.build(cfg.model, dm.dims)
    experiment_id = runs.connect(cfg.logger)
    if cfg.get("init_from") and ckpt is None:
        print(load_pretrained(model, runs.load_model(str(cfg.init_from)), str(cfg.init_from),
                              list(cfg.get("freeze") or [])))
    if rank_zero_only.rank != 0:  # a DDP worker (Lightning's RANK/LOCAL_RANK, a SLURM task): rank 0 logs and tests
        fit(cfg, dm, model, instantiate(cfg.logger), None)
        return math.nan
    # A sweep's trials learn their parent run from the environment: Hydra's launchers (joblib, a
    # cluster) start them in other processes, where no argument of ours can reach them.
    parent = os.environ.get(PARENT_RUN_ENV)
    with runs.open_run(cfg.get("run_name") or review.run_name(cfg, "train"), run_id, parent,
                       tags=trial_tags()) as run_id:
        if ckpt is None:
            runs.log_config(cfg, data_params(dm))
        review.tag_run(review.run_tags(cfg, "train"))
        fitted = fit(cfg, dm, model, instantiate(cfg.logger, run_id=run_id), ckpt)
        dm.read_all()  # after training on ticker shards: rank 0 tests every ticker
        frame, calibration = test_forecasts(cfg, model, dm, fitted.trainer)
        frame = with_baselines(frame, dm.frame, list(cfg.get("baselines", [])))
        results, val_ic = score_points(frame), validation_ic(model, dm, fitted.trainer)
        runs.log_metrics({**flat_metrics(results), "val/best_loss": fitted.val_loss, "val/best_ic": val_ic,
                          "perf/checkpoint_fraction": fitted.checkpoint_fraction})
        review.describe(train_description(results, frame, dict(loss=fitted.val_loss, ic=val_ic)))
        uri = log_outputs(frame, model, dm, val_ic, calibration)
        if cfg.get("register") and not parent:  # in a sweep, forecast.tracking.sweep registers the best trial
            print(registry.promote(cfg.registry.model, cfg.registry.alias, run_id, uri, fitted.val_loss))
    print(point_report(results, float(frame.group_by("date").len()["len"].median())))
    if calibration["method"] != "none":
        print(Calibration.from_state(calibration).describe())
    print(runs.footer(cfg.logger.tracking_uri, experiment_id, run_id))
    return fitted.val_loss


def build_data(cfg: DictConfig, stage: str | None = None):
    """The data module, set up (`stage="plan"`: with ticker shards, only surveyed; Lightning reads them)."""
    dm = instantiate(cfg.data)
    try:
        dm.setup(stage)
    except ConfigError as e:
        raise e.within("data") from None
    return dm


def data_params(dm) -> dict[str, str]:
    """The data sizes and the split dates and tickers the run resolved (given or by quantile)."""
    if dm.frame is None:  # ticker shards, surveyed but not read yet
        sizes, tickers = dm.survey.counts, dm.survey.manifest["ticker"]
    else:
        sizes, tickers = {s: len(a) for s, a in dm.anchors.items()}, dm.frame["ticker"].unique().sort()
    return {**{f"data.n_{s}": n for s, n in sizes.items()}, "data.val_start_resolved": dm.val_start,
            "data.test_start_resolved": dm.test_start, "data.tickers_resolved": ",".join(tickers)}


def test_forecasts(cfg: DictConfig, model, dm, trainer) -> tuple:
    """The test split's forecasts, calibrated on validation as `calibrate` says (`pred`, and
    `pred_uncalibrated` beside it), and the calibration's stored form (in the predict state, so that
    predict and the pyfunc apply it). Under DDP each rank holds a shard of validation: none is fitted."""
    method = str(cfg.get("calibrate") or "none")
    if trainer.world_size > 1:
        if method != "none":
            print(f"calibrate={method}: not fitted under DDP (each rank holds a shard of validation); the "
                  "forecasts are uncalibrated", file=sys.stderr)
        raw = forecast(model, dm.test_dataloader())  # (N,), or (N, Q) from a quantile head
        frame = dm.predictions_frame("test", model.head.point(raw))
        return with_head_quantiles(frame, raw, model.head, dm.target_std), Calibration().state()
    frame, info, calibration = calibrated_forecasts(model, dm, method, float(cfg.get("quantile_adapt", adaptive.GAMMA)))
    runs.log_metrics({f"calibration/{k}": v for k, v in info.items() if math.isfinite(v)})
    return frame, calibration.state()


def validation_ic(model, dm, trainer) -> float:
    """The IC of the chosen checkpoint's validation forecasts (NaN under DDP: each rank holds a shard)."""
    if trainer.world_size > 1:
        return math.nan
    return rank_metrics(dm.predictions_frame("val", model.head.point(forecast(model, dm.val_dataloader()))))["ic"]


def log_outputs(frame, model, dm, val_ic: float, calibration: dict) -> str:
    """The test forecasts (plots and Parquet), the torch model and its pyfunc; returns the pyfunc's URI,
    the one a registered version points to (so `mlflow models serve -m models:/..` takes named inputs)."""
    from forecast.evaluation.plots import close_all, plot_predictions, plot_rolling_ic
    from forecast.evaluation.scoring import forecasters

    runs.log_figure(plot_predictions(frame), "plots/test_predictions.png")
    runs.log_figure(plot_rolling_ic(frame, forecasters(frame), 63, {0: val_ic}), "plots/rolling_ic.png")
    close_all()
    runs.log_tables({"predictions/test_predictions.parquet": frame})
    example = next(iter(dm.test_dataloader()))["x"][:2].numpy()  # (2, L, F)
    runs.log_model(model, example)  # the torch module: init_from, predict, compress load it
    state = dict(dm.predict_state(), calibration=calibration)
    return serving.log_pyfunc(model, state, next(iter(dm.test_dataloader())))


def stored_config(run_id: str, cfg: DictConfig) -> DictConfig:
    """The run's own logged config, so a resumed run continues exactly what it started. Given values
    that differ from it are not applied, and are named on stderr."""
    stored = runs.stored_config(run_id)
    changed = differing(stored, cfg)
    if changed:
        shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
        print(f"resume={cfg.resume}: continuing run {run_id} with its logged config; not applied: {shown}",
              file=sys.stderr)
    stored.resume = cfg.resume
    return stored


def differing(stored: DictConfig, given: DictConfig) -> list[str]:
    """'key=given (run: stored)' for every config key whose given value differs from the run's."""
    a, b = (runs.flatten(OmegaConf.to_container(c, resolve=True)) for c in (stored, given))
    return [f"{k}={b.get(k)} (run: {a.get(k)})" for k in sorted(a.keys() | b.keys())
            if k != "resume" and a.get(k) != b.get(k)]
