"""What does the model learn, epoch by epoch? Train the full model of the ablation and, after every
epoch, print the validation loss, the validation IC and the IC of the validation forecasts against
each planted component (price, exogenous, calendar, news): a component the model has found shows a
positive IC; one it has not found stays near zero. Validation anchors only: the test split is never
read. Nothing is logged to MLflow.

    python experiments/modality_ablation/trace.py [--seed 0] [--epochs 10] [train overrides ...]

Overrides are relative to conf/experiment/modality_ablation.yaml (run `run.py` once first: it builds
the market). The callbacks of the config that change the weights seen at validation (`callbacks.ema`)
and the per-batch seed are kept; checkpointing and early stopping are not.
"""
from __future__ import annotations

import argparse
import os

import lightning as L
import polars as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from run import OUT, ROOT, components

from data_pipelines.synthetic import COMPONENTS
from forecast.evaluation.metrics import rank_metrics
from forecast.model.forecaster import NOT_INPUTS


class Trace(L.Callback):
    """After each validation epoch, the IC of the forecasts against the label and each component."""

    def __init__(self, dm, val: pl.DataFrame, tag: str):
        self.dm, self.val, self.tag = dm, val, tag

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        with torch.no_grad():
            pred = torch.cat([module(**{k: v for k, v in b.items() if k not in NOT_INPUTS})
                              for b in self.dm.val_dataloader()])  # (N,)
        f = self.val.with_columns(pred=pl.Series(pred.double().numpy()))
        found = {k: rank_metrics(f.with_columns(realised=pl.col(k)))["ic"] for k in COMPONENTS}
        loss, ic = float(trainer.callback_metrics["val/loss"]), rank_metrics(f)["ic"]
        print(f"{self.tag} epoch={trainer.current_epoch + 1} val/loss={loss:.4f} val/ic={ic:.4f} "
              + " ".join(f"{k}={v:.3f}" for k, v in found.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--tag", default="trace")
    args, overrides = parser.parse_known_args()
    os.chdir(ROOT)
    torch.set_num_threads(1)
    store = str(OUT / "store")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=modality_ablation", f"data.store={store}", f"seed={args.seed}",
                                          *overrides])
    L.seed_everything(args.seed, workers=True, verbose=False)
    dm = instantiate(cfg.data)
    dm.setup()
    model = instantiate(cfg.model, dims=dm.dims)
    # Trace first: it must see the averaged weights, which EMA swaps back out at the end of validation
    kept = [instantiate(c) for name, c in cfg.callbacks.items() if name not in ("checkpoint", "early_stopping")]
    trainer = L.Trainer(max_epochs=args.epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[Trace(dm, components(store, overrides, "val"), args.tag), *kept])
    trainer.fit(model, datamodule=dm)


if __name__ == "__main__":
    main()
