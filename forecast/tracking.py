"""What a run writes to MLflow besides Lightning's per-epoch losses: the resolved config, data
sizes, the test predictions with a plot, and the model."""
from __future__ import annotations

import tempfile
from importlib import metadata
from pathlib import Path

import lightning as L
import matplotlib
import mlflow
import polars as pl
from omegaconf import DictConfig, OmegaConf
from packaging.requirements import Requirement

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


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


def log_artifacts(frame: pl.DataFrame, model: L.LightningModule, dm):
    """Plot, predictions and the model; returns the logged model's info (its `model_uri`)."""
    mlflow.log_figure(plot_predictions(frame), "plots/test_predictions.png")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "test_predictions.parquet"
        frame.write_parquet(path)
        mlflow.log_artifact(str(path), "predictions")
    example = next(iter(dm.test_dataloader()))["x"][:2].numpy()  # (2, L, F)
    return mlflow.pytorch.log_model(model.cpu().eval(), name="model", input_example=example,
                                    serialization_format="pickle", pip_requirements=requirements())


def requirements() -> list[str]:
    """The project's dependencies pinned at their installed versions: what loading the model needs
    besides this package. Given explicitly, MLflow skips inferring them (a ~15 s subprocess)."""
    reqs = [Requirement(r) for r in metadata.requires("forecast") or []]
    return [f"{r.name}=={metadata.version(r.name).split('+')[0]}" for r in reqs if r.marker is None]


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
