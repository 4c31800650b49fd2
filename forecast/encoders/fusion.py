"""Fusion of per-modality embeddings into one (B, L, D) sequence."""
from __future__ import annotations

import torch
from torch import nn


class SumFusion(nn.Module):
    """Masked sum of the modalities' embeddings, then a LayerNorm."""

    def __init__(self, d_model: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)

    def forward(self, parts: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        total = sum(e * m[..., None] for e, m in parts.values())  # (B, L, D)
        return self.norm(total)
