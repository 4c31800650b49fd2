"""Heads read the backbone's last position (the anchor session) and predict the target."""
from __future__ import annotations

import torch
from torch import nn


class PointHead(nn.Module):
    """Point forecast of the (scaled) forward return."""

    def __init__(self, d_model: int, dropout: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(d_model, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(self.drop(h[:, -1])).squeeze(-1)  # (B, L, D) -> (B,)

    def loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(pred, y)
