"""Forecaster: encoders -> fusion -> backbone -> head, with parts built by Hydra from `conf/model/`."""
from __future__ import annotations

from typing import Callable

import lightning as L
import torch
from torch import nn

from forecast.errors import ConfigError


class Forecaster(L.LightningModule):
    """Encoders arrive as partials (they need the data's dims); backbone, fusion and head ready-built.
    `modalities` picks which of the configured encoders this model uses."""

    def __init__(self, encoders: dict[str, Callable[..., nn.Module]], fusion: nn.Module, backbone: nn.Module,
                 head: nn.Module, optimizer: Callable, dims: dict, d_model: int, modalities: list[str],
                 scheduler: Callable | None = None):
        super().__init__()
        dims = {k: int(v) for k, v in dims.items()}
        modalities = [str(m) for m in modalities]
        unknown = sorted(set(modalities) - set(encoders))
        if unknown or not modalities:
            raise ConfigError("modalities", f"unknown or empty: {unknown or modalities}; known: {sorted(encoders)}")
        self.save_hyperparameters({"dims": dims, "d_model": int(d_model), "modalities": modalities})
        self.encoders = nn.ModuleDict({m: encoders[m](dims=dims, d_model=d_model) for m in modalities})
        self.fusion, self.backbone, self.head = fusion, backbone, head
        self.make_optimizer, self.make_scheduler = optimizer, scheduler

    def forward(self, x: torch.Tensor, ticker: torch.Tensor | None = None, **inputs) -> torch.Tensor:
        """x (B, L, F) price features; ticker (B,) ids (0 = unseen); returns (B,) scaled forecasts."""
        if ticker is None:
            ticker = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        batch = dict(x=x, ticker=ticker, **inputs)
        parts = {name: enc(batch) for name, enc in self.encoders.items()}  # each (B, L, D), (B, L)
        h = self.backbone(self.fusion(parts))  # (B, L, D)
        return self.head(h)  # (B,)

    def _step(self, batch: dict, split: str) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k not in ("y", "row")}
        loss = self.head.loss(self(**inputs), batch["y"])
        self.log(f"{split}/loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=len(batch["y"]), sync_dist=True)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self(**{k: v for k, v in batch.items() if k not in ("y", "row")})

    def configure_optimizers(self):
        optimizer = self.make_optimizer(params=self.parameters())
        if self.make_scheduler is None:
            return optimizer
        return dict(optimizer=optimizer, lr_scheduler=self.make_scheduler(optimizer=optimizer))
