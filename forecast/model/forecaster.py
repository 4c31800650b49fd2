"""Forecaster: encoders -> fusion -> backbone -> head, with parts built by Hydra from `conf/model/`."""
from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L
import polars as pl
import torch
from torch import nn

from forecast.errors import ConfigError
from forecast.evaluation.metrics import rank_metrics

NOT_INPUTS = ("y", "row", "date")  # batch keys the model never sees


class Forecaster(L.LightningModule):
    """Encoders and fusion arrive as partials (they need the data's dims and the fused modalities);
    backbone and head ready-built. `modalities` picks which of the configured encoders this model uses.
    A head may take some modalities for itself (`FactorHead` with `exclusive`); the fusion and the
    backbone see the others. `ensemble` > 1 is for forecast/model/ensemble.py, which builds N of these."""

    def __init__(self, encoders: dict[str, Callable[..., nn.Module]], fusion: Callable[..., nn.Module],
                 backbone: nn.Module, head: nn.Module, optimizer: Callable, dims: dict, d_model: int,
                 modalities: list[str], scheduler: Callable | None = None, ensemble: int = 1):
        super().__init__()
        if int(ensemble) != 1:
            raise ConfigError("model.ensemble", f"{ensemble}: a seed ensemble is built by "
                              "forecast.model.ensemble.build(cfg.model, dims), not as one Forecaster")
        dims = {k: int(v) for k, v in dims.items()}
        modalities = [str(m) for m in modalities]
        unknown = sorted(set(modalities) - set(encoders))
        if unknown or not modalities:
            raise ConfigError("modalities", f"unknown or empty: {unknown or modalities}; known: {sorted(encoders)}")
        self.save_hyperparameters({"dims": dims, "d_model": int(d_model), "modalities": modalities})
        self.encoders = nn.ModuleDict({m: encoders[m](dims=dims, d_model=d_model) for m in modalities})
        taken = head.takes(modalities)
        self.fused = [m for m in modalities if m not in taken]
        if not self.fused:
            raise ConfigError("model.head", f"takes every modality ({sorted(taken)}); the backbone needs one")
        self.fusion, self.backbone, self.head = fusion(modalities=self.fused), backbone, head
        self.make_optimizer, self.make_scheduler = optimizer, scheduler

    def forward(self, x: torch.Tensor, ticker: torch.Tensor | None = None, **inputs) -> torch.Tensor:
        """x (B, L, F) price features; ticker (B,) ids (0 = unseen); returns (B,) scaled forecasts, or
        (B, Q) scaled quantiles from a quantile head (`self.head.point` picks the point forecast)."""
        if ticker is None:
            ticker = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        batch = dict(x=x, ticker=ticker, **inputs)
        parts = {name: enc(batch) for name, enc in self.encoders.items()}  # each (B, L, D), (B, L)
        parts = self.fusion.drop(parts)  # modality dropout (training only)
        h = self.backbone(self.fusion.fuse({m: parts[m] for m in self.fused}))  # (B, L, D)
        return self.head(h, parts)  # (B,)

    def _step(self, batch: dict, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        pred = self(**{k: v for k, v in batch.items() if k not in NOT_INPUTS})  # (B,)
        loss = self.head.loss(pred, batch["y"])
        self.log(f"{split}/loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=len(batch["y"]), sync_dist=True)
        return loss, pred

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def on_validation_epoch_start(self) -> None:
        self._val_preds = []

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, pred = self._step(batch, "val")
        self._val_preds.append((batch["ticker"], batch["date"], self.head.point(pred).detach(), batch["y"]))
        return loss

    def on_validation_epoch_end(self) -> None:
        """`val/ic`: the IC of the validation forecasts, as `test/ic` is defined (forecast/metrics.py).
        A per-date shift or scale of the label (data.label) leaves it unchanged."""
        if not self._val_preds:
            return
        ticker, day, pred, y = (torch.cat(c).cpu() for c in zip(*self._val_preds))  # each (N,)
        frame = pl.DataFrame(dict(ticker=ticker.numpy(), date=day.numpy(), pred=pred.double().numpy(),
                                  realised=y.double().numpy()))
        ic = rank_metrics(frame)["ic"]
        if not math.isnan(ic):
            self.log("val/ic", ic, sync_dist=True)

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self(**{k: v for k, v in batch.items() if k not in NOT_INPUTS})

    def configure_optimizers(self):
        optimizer = self.make_optimizer(params=self.parameters())
        if self.make_scheduler is None:
            return optimizer
        return dict(optimizer=optimizer, lr_scheduler=self.make_scheduler(optimizer=optimizer))
