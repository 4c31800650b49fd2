"""Crash-safe training: atomic checkpoints, per-epoch seeding, and finding the run to resume.

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
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from forecast.errors import UserError


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


class ResumedMLFlowLogger(MLFlowLogger):
    """MLFlowLogger that logs each (metric, step) once. Lightning logs an epoch's metrics before it
    writes that epoch's checkpoint, so a run killed in between re-runs the epoch on resume; its
    values (the same, as training is deterministic) are not logged a second time."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._seen: set[tuple[str, int]] | None = None

    @rank_zero_only
    def log_metrics(self, metrics, step: int | None = None) -> None:
        if self._seen is None:
            client = self.experiment
            keys = client.get_run(self.run_id).data.metrics
            self._seen = {(k, m.step) for k in keys for m in client.get_metric_history(self.run_id, k)}
        fresh = {k: v for k, v in metrics.items() if (k, step or 0) not in self._seen}
        self._seen |= {(k, step or 0) for k in fresh}
        if fresh:
            super().log_metrics(fresh, step)


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


def resume_target(client, experiment_id: str, resume: str, root: str) -> tuple[str, Path]:
    """(run_id, last.ckpt) for `resume=<run_id>` or `resume=last` (the newest run with a checkpoint)."""
    if resume == "last":
        runs = client.search_runs([experiment_id], order_by=["attributes.start_time DESC"], max_results=50)
        ids = [r.info.run_id for r in runs if (checkpoint_dir(root, experiment_id, r.info.run_id) / "last.ckpt").exists()]
        if not ids:
            raise UserError(f"resume=last: no run of this experiment has a checkpoint under {root}")
        resume = ids[0]
    ckpt = checkpoint_dir(root, experiment_id, resume) / "last.ckpt"
    if not ckpt.exists():
        raise UserError(f"resume={resume}: no checkpoint at {ckpt}")
    return resume, ckpt
