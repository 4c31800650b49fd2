"""THE fit / best-checkpoint / forecast path: `train`, every walk-forward fold, `predict` and the
students and pruned models of `compress` use it.

`fit` builds the Trainer from config (callbacks from `cfg.callbacks`, atomic checkpoint writes),
fits, and loads the weights of the epoch with the best validation loss into the model: the test
split never chooses anything. `forecast` then runs the model over a loader on this process alone
(also after DDP training), in order.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from forecast.training.checkpoint import AtomicCheckpointIO


@dataclass
class Fitted:
    trainer: L.Trainer
    val_loss: float  # best validation loss (nan without a checkpoint callback)
    checkpoint_fraction: float  # share of the fit time spent writing checkpoints


def fit(cfg: DictConfig, dm: L.LightningDataModule, model: L.LightningModule, logger,
        ckpt: str | Path | None = None, extra_callbacks: list | None = None) -> Fitted:
    """Trainer.fit (resuming from `ckpt` when given), then the best epoch's weights into `model`.
    `extra_callbacks`: built objects beside those of `cfg.callbacks` (a caller's progress bar)."""
    io = AtomicCheckpointIO()
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values()] + list(extra_callbacks or [])
    trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks, plugins=[io])
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm, ckpt_path=None if ckpt is None else str(ckpt))
    fraction = io.seconds / max(time.perf_counter() - start, 1e-9)
    return Fitted(trainer, load_best(trainer, model), fraction)


def load_best(trainer: L.Trainer, model: L.LightningModule) -> float:
    """Load the weights of the epoch with the best validation loss; return that loss."""
    cb = trainer.checkpoint_callback
    if cb is None or not cb.best_model_path:
        return math.nan
    model.load_state_dict(torch.load(cb.best_model_path, map_location="cpu", weights_only=True)["state_dict"])
    return float(cb.best_model_score)


@torch.no_grad()
def forecast(model: L.LightningModule, loader) -> torch.Tensor:
    """The model's forecasts (scaled units) for every sample of `loader`, in order: (N,)."""
    model.eval()
    return torch.cat([model.predict_step(batch, i) for i, batch in enumerate(loader)])  # (N,)
