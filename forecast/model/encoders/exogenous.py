"""Exogenous encoder: any number of macro/market series (as-of joined, train-normalised) -> embeddings."""
from __future__ import annotations

import torch
from torch import nn


class ExogenousEncoder(nn.Module):
    """An MLP over each series' value (zeroed where unknown) beside its known/unknown flag, so a missing
    value is distinguishable from a value of zero. A step is masked when no series is known.
    A batch without `exog` (the series are absent at prediction time) gives an all-masked output.
    `hidden: 0` makes it linear: the embedding cannot single out a date from the joint levels of the
    series (with a ticker-conditioned fusion, a per-ticker linear loading on each series is left)."""

    INPUTS = ("exog", "exog_mask")  # the batch keys it reads (besides x's shape)

    def __init__(self, dims: dict, d_model: int, hidden: int = 64, dropout: float = 0.0):
        super().__init__()
        self.n = dims["n_exog"]
        self.mlp = nn.Sequential(nn.Linear(2 * self.n, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, d_model)) if hidden else nn.Linear(2 * self.n, d_model)

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch.get("exog")  # (B, L, S)
        if x is None:
            B, L = batch["x"].shape[:2]
            x = batch["x"].new_zeros(B, L, self.n)
            known = torch.zeros(B, L, self.n, dtype=torch.bool, device=x.device)
        else:
            known = batch["exog_mask"]  # (B, L, S)
        h = torch.cat([x * known, known.to(x.dtype)], dim=-1)  # (B, L, 2S)
        return self.mlp(h), known.any(-1)  # (B, L, D), (B, L)
