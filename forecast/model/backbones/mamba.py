"""Mamba-1 backbone: selective SSM blocks with mamba_ssm's parameter names.

Parameter names (in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj) and initialisation follow
mamba_ssm's `Mamba`, so a state dict moves between this CPU path and the CUDA kernels.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from forecast.model.backbones.block import Stack, causal_conv
from forecast.model.backbones.scan import cuda_kernels, resolve_impl, selective_scan


class MambaMixer(nn.Module):
    """One Mamba-1 mixer: expand, short causal conv, selective scan, gate, project back."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | None = None, dt_min: float = 1e-3, dt_max: float = 0.1,
                 chunk: int = 64, impl: str = "auto"):
        super().__init__()
        d_inner = expand * d_model
        self.d_inner, self.d_state, self.d_conv = d_inner, d_state, d_conv
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.chunk, self.impl = chunk, impl
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)  # (E, N)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(d_inner))
        self._init_dt(dt_min, dt_max)

    def _init_dt(self, dt_min: float, dt_max: float):
        """mamba_ssm's init: dt ~ log-uniform[dt_min, dt_max], bias = softplus^-1(dt)."""
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def _ssm_inputs(self, x):
        """delta (pre-bias), B, C from the conv output x (B, L, E); returned channel-first."""
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = dt @ self.dt_proj.weight.T  # (B, L, E)
        return delta.transpose(1, 2), B.transpose(1, 2), C.transpose(1, 2)  # (B, E, L), (B, N, L) x2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        impl = resolve_impl(self.impl, x)
        x, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, E) each
        x = causal_conv(x, self.conv1d, fused=impl == "cpu")  # (B, L, E)
        delta, B, C = self._ssm_inputs(x)
        x = x.transpose(1, 2)  # (B, E, L) view; the CPU kernel reads it channels-last, copy-free
        A = -torch.exp(self.A_log.float())  # (E, N)
        y = selective_scan(x, delta, A, B, C, self.D.float(), z.transpose(1, 2),
                           delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
                           impl=impl, chunk=self.chunk)  # (B, E, L)
        return self.out_proj(y.transpose(1, 2))  # (B, L, D)

    def step(self, x_t: torch.Tensor, state=None):
        """One position x_t (B, D); state = (conv window (B, E, d_conv), ssm state (B, E, N))."""
        Bsz = x_t.shape[0]
        if state is None:
            state = (x_t.new_zeros(Bsz, self.d_inner, self.d_conv), x_t.new_zeros(Bsz, self.d_inner, self.d_state))
        conv_state, h = state
        x, z = self.in_proj(x_t).chunk(2, dim=-1)  # (B, E) each
        conv_state = torch.cat([conv_state[:, :, 1:], x[:, :, None]], dim=2)  # (B, E, d_conv)
        x = F.silu((conv_state * self.conv1d.weight[:, 0]).sum(-1) + self.conv1d.bias)  # (B, E)
        delta, B, C = self._ssm_inputs(x[:, None])  # (B, E, 1), (B, N, 1) x2
        A = -torch.exp(self.A_log.float())  # (E, N)
        if resolve_impl(self.impl, x_t) == "cuda":
            _, state_update = cuda_kernels()
            h = h.clone()
            y = state_update(h, x, delta[..., 0], A, B[..., 0], C[..., 0], self.D.float(), z=z,
                             dt_bias=self.dt_proj.bias.float(), dt_softplus=True)  # updates h in place
        else:
            delta = F.softplus(delta[..., 0] + self.dt_proj.bias)  # (B, E)
            h = torch.exp(delta[..., None] * A) * h + (delta * x)[..., None] * B[:, None, :, 0]  # (B, E, N)
            y = (h @ C).squeeze(-1) + self.D * x  # (B, E)
            y = y * F.silu(z)
        return self.out_proj(y), (conv_state, h)


class Mamba(Stack):
    """Stack of Mamba-1 blocks (mixer only, as in the paper) with RMSNorm and a final norm."""

    EXPORTABLE = "fixed"  # the chunked scan loops over chunks: the time length is traced in

    def __init__(self, d_model: int, n_layers: int = 2, dropout: float = 0.0, d_state: int = 16,
                 d_conv: int = 4, expand: int = 2, chunk: int = 64, impl: str = "auto"):
        mixers = [MambaMixer(d_model, d_state, d_conv, expand, chunk=chunk, impl=impl) for _ in range(n_layers)]
        super().__init__(d_model, mixers, dropout)
