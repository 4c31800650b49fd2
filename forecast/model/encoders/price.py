"""Price/volume encoder: scale-free features per session -> embeddings."""
from __future__ import annotations

import torch
from torch import nn


class PriceEncoder(nn.Module):
    INPUTS = ("x",)  # the batch keys it reads (besides x's shape)

    def __init__(self, dims: dict, d_model: int, dropout: float = 0.0):
        super().__init__()
        self.proj = nn.Linear(dims["n_features"], d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch["x"]  # (B, L, F)
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)  # (B, L)
        return self.drop(self.proj(x)), mask  # (B, L, D), (B, L)
