"""Crash-safe training: atomic checkpoints and per-batch seeding (the run to resume: forecast/tracking/runs.py).

A run killed at any moment resumes from `last.ckpt` of its MLflow run and ends with the same
metrics as an uninterrupted run: checkpoints are never half-written (temp file + fsync + rename),
and the data order of epoch e and the dropout masks of each batch depend only on (seed, epoch, batch).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file beside the target, fsyncs, renames; counts the seconds spent."""

    def __init__(self):
        super().__init__()
        self.seconds = 0.0

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        start = time.perf_counter()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.seconds += time.perf_counter() - start


class StepSeed(L.Callback):
    """Reseeds the global RNG (dropout, noise) before every training batch from (seed, epoch, batch),
    so nothing that draws random numbers between batches (a DataLoader iterator does) shifts them."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        torch.manual_seed((self.seed * 100_003 + trainer.current_epoch) * 1_000_003 + batch_idx)


def checkpoint_dir(root: str, experiment_id: str, run_id: str) -> Path:
    """Where Lightning puts a run's checkpoints with `default_root_dir=root` and the MLflow logger."""
    return Path(root) / experiment_id / run_id / "checkpoints"
