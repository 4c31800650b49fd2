"""Ticker identity: a learned embedding per training ticker; id 0 is shared by tickers unseen in training."""
from __future__ import annotations

import torch
from torch import nn


class TickerEncoder(nn.Module):
    INPUTS = ("ticker",)  # the batch keys it reads (besides x's shape)

    def __init__(self, dims: dict, d_model: int, init_std: float = 0.02):
        super().__init__()
        self.embed = nn.Embedding(dims["n_tickers"], d_model)
        nn.init.normal_(self.embed.weight, std=init_std)

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        B, L = batch["x"].shape[:2]
        ticker = batch["ticker"].clamp(0, self.embed.num_embeddings - 1)  # (B,) out-of-vocab -> 0
        e = self.embed(ticker)[:, None, :].expand(B, L, -1)  # (B, L, D)
        return e, torch.ones(B, L, dtype=torch.bool, device=e.device)
