"""Seed ensembles: `model.ensemble=N` trains N Forecasters of the same config, initialised from
successive draws of the seeded RNG, side by side in one LightningModule, and forecasts their mean.

Deep ensembles (Lakshminarayanan et al., 2017) average networks that differ only in their random
initialisation; here the members also share every batch, so N members cost one data pipeline and
N forward/backward passes, trained by one optimiser. Their parameters are disjoint and the training
loss is the sum of the members' own losses, so each member's gradient is its own (AdamW updates each
parameter alone; only gradient clipping by the global norm, when configured, couples them). The
validation loss, its best checkpoint and early stopping are those of the mean forecast, the number
that is deployed. A quantile head's quantiles are averaged level by level (Vincentisation), which
keeps them ordered.

Member 0 draws the same initialisation as `ensemble=1` would, so `ensemble=1` is the single model
itself (built without this wrapper, its checkpoints unchanged).
"""
from __future__ import annotations

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from forecast.errors import ConfigError
from forecast.model.forecaster import NOT_INPUTS, Forecaster


def build(model_cfg: DictConfig, dims: dict) -> L.LightningModule:
    """The model of `model_cfg`: one Forecaster, or an Ensemble of `model_cfg.ensemble` of them."""
    n = int(model_cfg.get("ensemble", 1))
    if n < 1:
        raise ConfigError("model.ensemble", f"must be at least 1, got {n}")
    members = [instantiate(model_cfg, dims=dims, ensemble=1) for _ in range(n)]
    return members[0] if n == 1 else Ensemble(members)


class Ensemble(L.LightningModule):
    """N Forecasters; `forward` is the mean of theirs, `head` is the members' (shared) head type."""

    def __init__(self, members: list[Forecaster]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.save_hyperparameters({**members[0].hparams, "ensemble": len(members)})

    @property
    def head(self) -> nn.Module:
        return self.members[0].head

    def forward(self, *args, **inputs) -> torch.Tensor:
        """The mean of the members' forecasts (arguments as Forecaster.forward): (B,), or (B, Q)."""
        return torch.stack([m(*args, **inputs) for m in self.members]).mean(0)  # (N, B[, Q]) -> (B[, Q])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k not in NOT_INPUTS}
        losses = torch.stack([m.head.loss(m(**inputs), batch["y"]) for m in self.members])  # (N,)
        self.log("train/loss", losses.mean(), on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=len(batch["y"]), sync_dist=True)
        return losses.sum()

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self(**{k: v for k, v in batch.items() if k not in NOT_INPUTS})

    def configure_optimizers(self):
        first = self.members[0]
        optimizer = first.make_optimizer(params=self.parameters())
        if first.make_scheduler is None:
            return optimizer
        return dict(optimizer=optimizer, lr_scheduler=first.make_scheduler(optimizer=optimizer))

    # validation as a single Forecaster's, of the mean forecast: val/loss, val/ic
    _step = Forecaster._step
    validation_step = Forecaster.validation_step
    on_validation_epoch_start = Forecaster.on_validation_epoch_start
    on_validation_epoch_end = Forecaster.on_validation_epoch_end
