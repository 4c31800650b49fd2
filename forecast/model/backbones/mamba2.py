"""Mamba-2 backbone: the SSD mixer (scalar decay per head) in chunked matmul form.

Parameter names follow mamba_ssm's `Mamba2Simple` with one group (in_proj, conv1d, dt_bias,
A_log, D, norm, out_proj).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from forecast.model.backbones.block import Stack, causal_conv
from forecast.model.backbones.scan import resolve_impl
from forecast.model.backbones.ssd import decay_attention_chunked, decay_attention_step


class GatedRMSNorm(nn.RMSNorm):
    """RMSNorm(y * silu(z)), mamba_ssm's RMSNormGated with norm_before_gate=False."""

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return super().forward(y * F.silu(z))


class Mamba2Mixer(nn.Module):
    """in_proj -> causal conv over (x, B, C) -> SSD over heads -> gated norm -> out_proj."""

    def __init__(self, d_model: int, d_state: int = 64, d_conv: int = 4, expand: int = 2,
                 headdim: int = 64, chunk: int = 64, impl: str = "auto", dt_min: float = 1e-3,
                 dt_max: float = 0.1):
        super().__init__()
        d_inner = expand * d_model
        if d_inner % headdim:
            raise ValueError(f"expand*d_model={d_inner} is not divisible by headdim={headdim}")
        self.d_inner, self.d_state, self.d_conv = d_inner, d_state, d_conv
        self.n_heads, self.headdim, self.chunk, self.impl = d_inner // headdim, headdim, chunk, impl
        conv_dim = d_inner + 2 * d_state
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * d_state + self.n_heads, bias=False)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1)
        dt = torch.exp(torch.rand(self.n_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_log = nn.Parameter(torch.log(torch.empty(self.n_heads).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(self.n_heads))
        self.norm = GatedRMSNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def _split(self, zxbcdt):
        return zxbcdt.split([self.d_inner, self.d_inner + 2 * self.d_state, self.n_heads], dim=-1)

    def _ssd_inputs(self, xBC, dt):
        """Heads view of x (.., H, P), B and C (.., N), dt (.., H) and log decay (.., H)."""
        x, B, C = xBC.split([self.d_inner, self.d_state, self.d_state], dim=-1)
        x = x.unflatten(-1, (self.n_heads, self.headdim))  # (.., H, P)
        dt = F.softplus(dt + self.dt_bias)  # (.., H)
        return x, B, C, dt, dt * -torch.exp(self.A_log)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        fused = resolve_impl(self.impl, u) == "cpu"  # the compiled causal conv
        z, xBC, dt = self._split(self.in_proj(u))  # (B, L, E), (B, L, E+2N), (B, L, H)
        xBC = causal_conv(xBC, self.conv1d, fused)  # (B, L, E+2N)
        x, B, C, dt, log_a = self._ssd_inputs(xBC, dt)
        v = (x * dt[..., None]).transpose(1, 2)  # (B, H, L, P)
        # one group: C and B (B, 1, L, N) are shared by all heads
        y = decay_attention_chunked(C[:, None], B[:, None], v, log_a.transpose(1, 2), self.chunk)  # (B, H, L, P)
        y = y.transpose(1, 2) + x * self.D[:, None]  # (B, L, H, P)
        return self.out_proj(self.norm(y.flatten(2), z))  # (B, L, D)

    def step(self, u_t: torch.Tensor, state=None):
        """One position u_t (B, D); state = (conv window (B, E+2N, d_conv), S (B, H, N, P))."""
        z, xBC, dt = self._split(self.in_proj(u_t))  # (B, E), (B, E+2N), (B, H)
        conv_state = xBC.new_zeros(*xBC.shape, self.d_conv) if state is None else state[0]
        conv_state = torch.cat([conv_state[:, :, 1:], xBC[:, :, None]], dim=2)  # (B, E+2N, d_conv)
        xBC = F.silu((conv_state * self.conv1d.weight[:, 0]).sum(-1) + self.conv1d.bias)  # (B, E+2N)
        x, B, C, dt, log_a = self._ssd_inputs(xBC, dt)  # x (B, H, P)
        H = self.n_heads
        y, S = decay_attention_step(C[:, None].expand(-1, H, -1), B[:, None].expand(-1, H, -1),
                                    x * dt[..., None], log_a, None if state is None else state[1])
        y = y + x * self.D[:, None]  # (B, H, P)
        return self.out_proj(self.norm(y.flatten(1), z)), (conv_state, S)


class Mamba2(Stack):
    """Stack of Mamba-2 blocks (mixer only, as in the paper) with a final norm."""

    EXPORTABLE = "fixed"  # the chunked SSD branches on the length

    def __init__(self, d_model: int, n_layers: int = 2, dropout: float = 0.0, d_state: int = 64,
                 d_conv: int = 4, expand: int = 2, headdim: int = 64, chunk: int = 64, impl: str = "auto"):
        mixers = [Mamba2Mixer(d_model, d_state, d_conv, expand, headdim, chunk, impl) for _ in range(n_layers)]
        super().__init__(d_model, mixers, dropout)
