"""News encoders: the headlines of a session -> one vector.

`NewsEncoder` (default, nothing to download): a trainable embedding bag of hashed word 1- and 2-grams;
each headline is the mean of its n-gram embeddings and a session the mean of its headlines (the
weights come with the data, see `forecast.data.modalities.news_inputs`). `SentenceNewsEncoder`: a projection
of precomputed MiniLM sentence embeddings (modality `news_minilm`). Sessions without news are masked;
a batch without news (absent at prediction time) is all masked.
"""
from __future__ import annotations

import torch
from torch import nn


class NewsEncoder(nn.Module):
    INPUTS = ("news_tokens", "news_weights")  # the batch keys it reads (absent: all masked)

    def __init__(self, dims: dict, d_model: int, n_buckets: int = 1 << 14, d_embed: int = 64,
                 dropout: float = 0.0):
        super().__init__()
        self.n_buckets = n_buckets
        self.bag = nn.EmbeddingBag(n_buckets + 1, d_embed, mode="sum", padding_idx=0)
        nn.init.normal_(self.bag.weight, std=0.1)
        self.mlp = nn.Sequential(nn.LayerNorm(d_embed), nn.Linear(d_embed, d_model), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(d_model, d_model))

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        B, L = batch["x"].shape[:2]
        tokens = batch.get("news_tokens")  # (B, L, K)
        out = batch["x"].new_zeros(B, L, self.mlp[-1].out_features)  # (B, L, D)
        if tokens is None:
            return out, torch.zeros(B, L, dtype=torch.bool, device=out.device)
        mask = (tokens > 0).any(-1)  # (B, L)
        if torch.compiler.is_exporting():  # no data-dependent shapes: every step, masked after; the bag as a
            # gather and a weighted sum (ONNX lowers EmbeddingBag to a loop over the rows)
            ids = torch.where(tokens > 0, (tokens.long() - 1) % self.n_buckets + 1, 0).flatten(0, 1)  # (B*L, K)
            w = batch["news_weights"].flatten(0, 1) * (ids > 0)  # (B*L, K): padding adds nothing, as in the bag
            rows = nn.functional.embedding(ids, self.bag.weight)  # (B*L, K, E): a Gather (int8-quantisable)
            emb = self.mlp((rows * w[..., None]).sum(1))  # (B*L, D)
            return emb.view(B, L, -1) * mask[..., None], mask
        tok, w = tokens[mask].long(), batch["news_weights"][mask]  # (M, K) for the M steps with news
        ids = torch.where(tok > 0, (tok - 1) % self.n_buckets + 1, 0)  # fold hashed ids into the buckets
        if len(ids):
            out[mask] = self.mlp(self.bag(ids, per_sample_weights=w))  # (M, D)
        return out, mask


class SentenceNewsEncoder(nn.Module):
    INPUTS = ("news_emb", "news_emb_mask")  # the batch keys it reads (absent: all masked)

    def __init__(self, dims: dict, d_model: int, dropout: float = 0.0):
        super().__init__()
        self.n = dims.get("n_news_emb", 384)
        self.mlp = nn.Sequential(nn.Linear(self.n, d_model), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(d_model, d_model))

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        B, L = batch["x"].shape[:2]
        emb = batch.get("news_emb")  # (B, L, E)
        if emb is None:
            emb = batch["x"].new_zeros(B, L, self.n)
            mask = torch.zeros(B, L, dtype=torch.bool, device=emb.device)
        else:
            mask = batch["news_emb_mask"]  # (B, L)
        return self.mlp(emb) * mask[..., None], mask  # (B, L, D), (B, L)
