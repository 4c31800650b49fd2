"""Calendar encoder: weekday, month, distance to month/quarter ends and exchange holidays -> embeddings."""
from __future__ import annotations

import torch
from torch import nn


class CalendarEncoder(nn.Module):
    """A two-layer MLP over the per-session calendar features of `forecast.data.modalities.calendar_features`;
    `hidden: 0` makes it linear (a weekday or turn-of-month profile, no interactions between them).
    The calendar is always known, so the mask is all True."""

    INPUTS = ("calendar",)  # the batch keys it reads (besides x's shape)

    def __init__(self, dims: dict, d_model: int, hidden: int = 64, dropout: float = 0.0):
        super().__init__()
        n = dims.get("n_calendar", 30)
        self.mlp = nn.Sequential(nn.Linear(n, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, d_model)) if hidden else nn.Linear(n, d_model)

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        c = batch["calendar"]  # (B, L, C)
        return self.mlp(c), torch.ones(c.shape[:2], dtype=torch.bool, device=c.device)  # (B, L, D), (B, L)
