"""Chunked causal linear attention with an optional per-head decay (RetNet) or gate (GLA).

decay: "none"  -> plain linear attention, S_t = S_{t-1} + k_t^T v_t
       "fixed" -> RetNet retention, a fixed decay gamma_h = 1 - 2^(-5-h) per head
       "gate"  -> a data-dependent per-head gate, log a_t = logsigmoid(w x_t + b) / 16 (GLA's scale)
Each head's output is RMS-normalised (RetNet's group norm) and gated by silu(W_g x).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from forecast.model.backbones.block import MLP, Stack
from forecast.model.backbones.ssd import decay_attention_chunked, decay_attention_step

DECAYS = ("none", "fixed", "gate")


class LinearAttentionMixer(nn.Module):
    """Multi-head linear attention; `step` carries one (hd, hd) state per head: O(1) per position."""

    def __init__(self, d_model: int, n_heads: int = 4, decay: str = "gate", chunk: int = 64):
        super().__init__()
        if decay not in DECAYS:
            raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads, self.hd, self.decay, self.chunk = n_heads, d_model // n_heads, decay, chunk
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.gate = nn.Linear(d_model, d_model, bias=False)  # output gate
        self.norm = nn.RMSNorm(self.hd)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        if decay == "gate":
            self.decay_proj = nn.Linear(d_model, n_heads)
        gamma = 1 - 2.0 ** (-5 - torch.arange(n_heads, dtype=torch.float32))
        self.register_buffer("log_gamma", torch.log(gamma), persistent=False)  # (H,)

    def _log_decay(self, x: torch.Tensor) -> torch.Tensor:
        """Log decay per position and head, (.., H)."""
        if self.decay == "gate":
            return F.logsigmoid(self.decay_proj(x)) / 16
        shape = (*x.shape[:-1], self.n_heads)
        if self.decay == "fixed":
            return self.log_gamma.expand(shape)
        return x.new_zeros(shape)

    def _qkv(self, x: torch.Tensor):
        q, k, v = self.qkv(x).unflatten(-1, (3, self.n_heads, self.hd)).unbind(-3)  # (.., H, hd)
        return q / math.sqrt(self.hd), k, v

    def _out(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(y).flatten(-2) * F.silu(self.gate(x)))  # (.., D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.transpose(1, 2) for t in self._qkv(x))  # (B, H, L, hd)
        log_a = self._log_decay(x).transpose(1, 2)  # (B, H, L)
        y = decay_attention_chunked(q, k, v, log_a, self.chunk)  # (B, H, L, hd)
        return self._out(y.transpose(1, 2), x)  # (B, L, D)

    def step(self, x_t: torch.Tensor, state=None):
        q, k, v = self._qkv(x_t)  # (B, H, hd)
        y, state = decay_attention_step(q, k, v, self._log_decay(x_t), state)  # (B, H, hd)
        return self._out(y, x_t), state


class LinearAttention(Stack):
    """Per layer: linear attention then an MLP, each a residual pre-norm sublayer."""

    EXPORTABLE = "fixed"  # the chunked form branches on the length

    def __init__(self, d_model: int, n_layers: int = 2, dropout: float = 0.0, n_heads: int = 4,
                 decay: str = "gate", mlp_ratio: float = 4.0, chunk: int = 64):
        mixers = []
        for _ in range(n_layers):
            mixers += [LinearAttentionMixer(d_model, n_heads, decay, chunk), MLP(d_model, mlp_ratio)]
        super().__init__(d_model, mixers, dropout)
