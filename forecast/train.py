"""train(cfg): seed; build data, model, trainer and logger from config; fit; forecast the test split;
score it beside the naive baselines; log everything to one MLflow run; return the validation loss."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import lightning as L
import matplotlib
import mlflow
import polars as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf

from forecast.baselines import BASELINES
from forecast.errors import ConfigError
from forecast.metrics import point_metrics

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def train(cfg: DictConfig) -> float:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = instantiate(cfg.data)
    try:
        dm.setup()
    except ConfigError as e:
        raise e.within("data") from None
    model = instantiate(cfg.model, dims=dm.dims)
    mlflow.set_tracking_uri(cfg.logger.tracking_uri)
    experiment = mlflow.set_experiment(cfg.logger.experiment_name)
    with mlflow.start_run(run_name=cfg.get("run_name")) as run:
        log_config(cfg, dm)
        logger = MLFlowLogger(experiment_name=cfg.logger.experiment_name, tracking_uri=cfg.logger.tracking_uri,
                              run_id=run.info.run_id)
        callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values()]
        trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks)
        trainer.fit(model, datamodule=dm)
        ckpt = "best" if trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path else None
        pred = torch.cat(trainer.predict(model, dataloaders=dm.test_dataloader(), ckpt_path=ckpt))  # (N,)
        frame = with_baselines(dm.predictions_frame("test", pred), dm)
        results = score(frame)
        mlflow.log_metrics({k: v for k, v in flat_metrics(results).items() if not math.isnan(v)})
        log_artifacts(frame, model, dm)
        val_loss = float(trainer.checkpoint_callback.best_model_score) if ckpt else math.nan
    uri = cfg.logger.tracking_uri
    print(report(results))
    print(f"view: mlflow ui --backend-store-uri {uri}  ->  "
          f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}")
    print(f"run_id={run.info.run_id} tracking_uri={uri}")
    return val_loss


def with_baselines(frame: pl.DataFrame, dm) -> pl.DataFrame:
    train = dm.frame.filter(pl.col("split") == "train")
    return frame.with_columns(**{f"pred_{name}": fn(frame, train) for name, fn in BASELINES.items()})


def score(frame: pl.DataFrame) -> dict[str, dict[str, float]]:
    """{'model': metrics, '<baseline>': metrics} on the same test anchors."""
    return {"model": point_metrics(frame), **{n: point_metrics(frame, f"pred_{n}") for n in BASELINES}}


def flat_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
    out = {f"test/{k}": v for k, v in results["model"].items()}
    for name, metrics in results.items():
        if name != "model":
            out.update({f"baseline/{name}/test/{k}": v for k, v in metrics.items()})
    return out


def report(results: dict[str, dict[str, float]]) -> str:
    keys = list(results["model"])
    lines = [f"{'test split':<12}" + "".join(f"{k:>12}" for k in keys)]
    for name, metrics in results.items():
        lines.append(f"{name:<12}" + "".join(f"{metrics[k]:>12.6g}" for k in keys))
    best_mse = min(results, key=lambda n: results[n]["mse"])
    if best_mse != "model":
        lines.append(f"note: the model's test MSE is not better than the '{best_mse}' baseline")
    return "\n".join(lines)


def flatten(d, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, f"{key}.") if isinstance(v, dict) else {key: str(v)})
    return out


def log_config(cfg: DictConfig, dm) -> None:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    mlflow.log_text(OmegaConf.to_yaml(resolved), "config.yaml")
    mlflow.log_params(flatten(resolved))
    sizes = {f"data.n_{s}": len(a) for s, a in dm.anchors.items()}
    mlflow.log_params(dict(sizes, **{"data.val_start_resolved": dm.val_start, "data.test_start_resolved": dm.test_start,
                                     "data.tickers_resolved": ",".join(dm.frame["ticker"].unique().sort())}))


def log_artifacts(frame: pl.DataFrame, model: L.LightningModule, dm) -> None:
    mlflow.log_figure(plot_predictions(frame), "plots/test_predictions.png")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "test_predictions.parquet"
        frame.write_parquet(path)
        mlflow.log_artifact(str(path), "predictions")
    example = next(iter(dm.test_dataloader()))["x"][:2].numpy()  # (2, L, F)
    mlflow.pytorch.log_model(model.cpu().eval(), name="model", input_example=example,
                             serialization_format="pickle")


def plot_predictions(frame: pl.DataFrame):
    tickers = frame["ticker"].unique().sort().to_list()
    fig, axes = plt.subplots(len(tickers), 2, figsize=(12, 3 * len(tickers)), squeeze=False)
    for (ax_t, ax_s), ticker in zip(axes, tickers):
        f = frame.filter(pl.col("ticker") == ticker)
        ax_t.plot(f["date"], f["realised"], lw=0.5, color="0.6", label="realised")
        ax_t.plot(f["date"], f["pred"], lw=0.8, color="C0", label="forecast")
        ax_t.set_title(f"{ticker}: forward log return, test split")
        ax_t.legend(loc="upper right")
        ax_s.scatter(f["pred"], f["realised"], s=2, alpha=0.4)
        ax_s.set_xlabel("forecast")
        ax_s.set_ylabel("realised")
    fig.tight_layout()
    return fig
