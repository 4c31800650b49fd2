"""Causal softmax Transformer baseline: SDPA attention with rotary positions, plus an MLP."""
import torch
import torch.nn.functional as F
from torch import nn

from forecast.model.backbones.block import MLP, Stack


def rotary(x: torch.Tensor, start: int = 0, base: float = 10000.0) -> torch.Tensor:
    """Rotate pairs of channels of x (B, H, L, hd) by position-dependent angles (RoPE)."""
    hd, L = x.shape[-1], x.shape[-2]
    inv_freq = base ** (-torch.arange(0, hd, 2, device=x.device, dtype=torch.float32) / hd)  # (hd/2,)
    pos = torch.arange(start, start + L, device=x.device, dtype=torch.float32)  # (L,)
    angle = pos[:, None] * inv_freq  # (L, hd/2)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (B, H, L, hd/2)
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention; `step` keeps a KV cache (B, H, t, hd)."""

    def __init__(self, d_model: int, n_heads: int = 4, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def _heads(self, x: torch.Tensor, start: int):
        Bsz, L, Dm = x.shape
        q, k, v = self.qkv(x).view(Bsz, L, 3, self.n_heads, Dm // self.n_heads).permute(2, 0, 3, 1, 4)
        return rotary(q, start), rotary(k, start), v  # (B, H, L, hd) each

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(x, 0)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)  # (B, H, L, hd)
        return self.proj(y.transpose(1, 2).flatten(2))  # (B, L, D)

    def step(self, x_t: torch.Tensor, state=None):
        start = 0 if state is None else state[0].shape[2]
        q, k, v = self._heads(x_t[:, None], start)  # (B, H, 1, hd)
        if state is not None:
            k, v = torch.cat([state[0], k], dim=2), torch.cat([state[1], v], dim=2)  # (B, H, t, hd)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, H, 1, hd): the cache holds only the past
        return self.proj(y.transpose(1, 2).flatten(1)), (k, v)


class Transformer(Stack):
    """Pre-norm causal Transformer: per layer, attention then an MLP, each residual."""

    EXPORTABLE = "dynamic"
    GROWING_STATE = True  # the step state is a KV cache, one position longer each step

    def __init__(self, d_model: int, n_layers: int = 2, dropout: float = 0.0, n_heads: int = 4,
                 mlp_ratio: float = 4.0):
        mixers = []
        for _ in range(n_layers):
            mixers += [CausalSelfAttention(d_model, n_heads, dropout), MLP(d_model, mlp_ratio)]
        super().__init__(d_model, mixers, dropout)
