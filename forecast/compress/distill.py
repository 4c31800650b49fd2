"""Distillation: a smaller student (narrower, shallower, another backbone) trained on the teacher's
forecasts plus the labels, on the teacher's training period only.

The loss is alpha * mse(student, teacher) + (1 - alpha) * mse(student, label). For squared error this
is, up to a constant, mse(student, alpha * teacher + (1 - alpha) * label): the student is an ordinary
Forecaster trained by THE fit path (forecast/training/fit.py) on a blended training target. Only the
training anchors' targets are blended; the validation split keeps the real label, so the checkpoint
kept (best validation loss) and every choice of the search are judged against realised returns, and
the test split is never seen. Students start from scratch with the teacher's recipe (optimizer,
callbacks, seed) and `epochs` epochs; a pruned teacher is fine-tuned the same way.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import tempfile
import warnings

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from forecast.resources import conf_dir
from forecast.training.fit import fit, forecast


def teacher_targets(teacher, dm) -> torch.Tensor:
    """The teacher's forecasts (scaled units) for the training anchors, in their order: (N_train,)."""
    loader = torch.utils.data.DataLoader(dm.dataset("train"), batch_size=None, sampler=_ordered(dm, "train"))
    return forecast(teacher, loader)


def _ordered(dm, split: str):
    from forecast.data.windows import EpochBatchSampler

    return EpochBatchSampler(len(dm.anchors[split]), dm.batch_size, shuffle=False, shard=False)


@contextlib.contextmanager
def blended(dm, teacher: torch.Tensor, alpha: float):
    """dm's training targets replaced by alpha * teacher + (1 - alpha) * label while inside."""
    rows, original = dm.anchors["train"], dm.targets
    dm.targets = original.clone()
    dm.targets[rows] = alpha * teacher.float() + (1 - alpha) * original[rows]  # (N_train,)
    try:
        yield dm
    finally:
        dm.targets = original


def student_model_config(model_cfg: DictConfig, width: int | None, depth: int | None,
                         backbone: str | None) -> DictConfig:
    """The teacher's model config with another width (every d_model), depth and/or backbone; one
    network, also when the teacher is a seed ensemble (`ensemble`)."""
    cfg = copy.deepcopy(model_cfg)
    with open_dict(cfg):
        cfg.pop("ensemble", None)
    if backbone and backbone != _name(cfg.backbone):
        fresh = OmegaConf.load(conf_dir() / "model" / "backbone" / f"{backbone}.yaml")
        fresh.d_model, fresh.dropout = cfg.backbone.d_model, cfg.backbone.get("dropout", 0.0)
        cfg.backbone = fresh
    if depth:
        cfg.backbone.n_layers = int(depth)
    if width:
        _set_width(cfg, int(width))
    return cfg


def _name(backbone: DictConfig) -> str:
    return str(backbone._target_).rsplit(".", 1)[-1].lower()


def _set_width(node, width: int) -> None:
    """Every `d_model` key below `node` = width; head counts and head dims kept dividing it."""
    if isinstance(node, DictConfig):
        for key in list(node.keys()):
            if key == "d_model":
                node[key] = width
            elif isinstance(node[key], DictConfig):
                _set_width(node[key], width)
        if "n_heads" in node and "d_model" in node:
            node.n_heads = math.gcd(int(node.n_heads), width)
        if "headdim" in node and "d_model" in node:
            node.headdim = math.gcd(int(node.headdim), int(node.get("expand", 2)) * width)


def train(model: L.LightningModule, dm, cfg: DictConfig, epochs: int, callbacks: list) -> float:
    """Fit `model` on dm (its targets as they are) for `epochs` with the teacher's trainer and
    callbacks, no logger, checkpoints in a temporary folder; returns the best validation loss."""
    model.train()  # a copy of the (eval-mode) teacher: Lightning keeps the mode it is given
    with tempfile.TemporaryDirectory() as tmp:
        trainer = OmegaConf.merge(cfg.trainer, dict(max_epochs=int(epochs), enable_progress_bar=False,
                                                    enable_model_summary=False, default_root_dir=tmp))
        run_cfg = OmegaConf.create(dict(trainer=trainer, callbacks=cfg.get("callbacks", {})))
        with _lightning_quiet():
            fitted = fit(run_cfg, dm, model, False, extra_callbacks=callbacks)
    return fitted.val_loss


def student(cfg: DictConfig, dm, width: int | None, depth: int | None, backbone: str | None):
    """A fresh student built from the teacher's config (seeded as the teacher was)."""
    L.seed_everything(int(cfg.get("seed", 0)), workers=True, verbose=False)
    return instantiate(student_model_config(cfg.model, width, depth, backbone), dims=dm.dims)


@contextlib.contextmanager
def _lightning_quiet():
    """Lightning's per-Trainer banners (GPU available, ...) once per candidate are noise here."""
    names = ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="lightning")  # deprecations inside Lightning itself
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
