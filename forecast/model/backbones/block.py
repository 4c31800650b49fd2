"""Residual pre-norm blocks, the stack every backbone is built from, and a causal conv.

A mixer maps (B, L, D) -> (B, L, D) causally and has `step(x_t, state) -> (y_t, state)`
for one new position, x_t (B, D). The stack applies `x + dropout(mixer(norm(x)))` per
sublayer and ends with a final norm, so a head can read the last position directly.
"""
import torch
import torch.nn.functional as F
from torch import nn


def causal_conv(x: torch.Tensor, conv: nn.Conv1d, fused: bool = False) -> torch.Tensor:
    """silu(depthwise causal conv of x (B, L, C)) with conv's (C, 1, K) weight and bias.

    Same result as silu(conv(x.transpose(1, 2))[..., :L]) with padding K-1, computed
    channels-last (PyTorch's depthwise conv1d backward is slow on CPU): by the compiled kernel
    when `fused`, else as K shifted products.
    """
    w, L = conv.weight[:, 0], x.shape[1]  # (C, K)
    if fused:
        from forecast.model.backbones.cpu_kernels import CausalConv

        return CausalConv.apply(x.contiguous(), w, conv.bias, True)
    K = w.shape[1]
    xp = F.pad(x, (0, 0, K - 1, 0))  # (B, L+K-1, C)
    y = xp[:, :L] * w[:, 0] + conv.bias  # (B, L, C)
    for k in range(1, K):
        y = y + xp[:, k:k + L] * w[:, k]
    return F.silu(y)


class MLP(nn.Module):
    """Position-wise feed-forward sublayer (stateless, so trivially causal)."""

    def __init__(self, d_model: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(d_model * ratio)
        self.fc = nn.Linear(d_model, hidden)
        self.proj = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(nn.functional.gelu(self.fc(x)))  # (..., D)

    def step(self, x_t: torch.Tensor, state=None):
        return self(x_t), state


class Residual(nn.Module):
    """x + dropout(mixer(norm(x))), for the full sequence or one step."""

    def __init__(self, d_model: int, mixer: nn.Module, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.RMSNorm(d_model)
        self.mixer = mixer
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.mixer(self.norm(x)))  # (B, L, D)

    def step(self, x_t: torch.Tensor, state=None):
        y_t, state = self.mixer.step(self.norm(x_t), state)  # (B, D)
        return x_t + self.drop(y_t), state


class Stack(nn.Module):
    """Residual sublayers then a final RMSNorm; the base class of every backbone.

    Declared capabilities, read by the code that needs them instead of probing with hasattr:
    `CAN_STEP`: `step(x_t, state)` gives forward's outputs one position at a time (tested for every
    backbone), what incremental daily inference needs.
    `EXPORTABLE`: how `torch.onnx.export` (dynamo) captures the backbone, established per backbone by
    tests/test_compress_export.py: "dynamic" (any batch and time length), "fixed" (any batch, the time
    length it was exported with: a chunked or looped scan specialises it), None (not exportable).
    `GROWING_STATE`: the step state grows with each position (a KV cache), so no fixed-shape step
    function can be exported (forecast/compress/step.py)."""

    CAN_STEP = True
    EXPORTABLE: str | None = None
    GROWING_STATE = False

    def __init__(self, d_model: int, mixers: list[nn.Module], dropout: float = 0.0):
        super().__init__()
        self.d_model = d_model
        self.blocks = nn.ModuleList(Residual(d_model, m, dropout) for m in mixers)
        self.norm = nn.RMSNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"{type(self).__name__} expects (B, L, {self.d_model}), got {tuple(x.shape)}")
        for block in self.blocks:
            x = block(x)  # (B, L, D)
        return self.norm(x)

    def step(self, x_t: torch.Tensor, state: list | None = None):
        """One new position x_t (B, D); state=None at the start. Returns (y_t, state)."""
        state = state if state is not None else [None] * len(self.blocks)
        new_state = []
        for block, s in zip(self.blocks, state):
            x_t, s = block.step(x_t, s)  # (B, D)
            new_state.append(s)
        return self.norm(x_t), new_state
