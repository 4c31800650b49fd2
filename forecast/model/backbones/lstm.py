"""LSTM baseline: one nn.LSTM per layer inside the same residual pre-norm stack."""
import torch
from torch import nn

from forecast.model.backbones.block import Stack


class LSTMMixer(nn.Module):
    """A single-layer LSTM of width d_model; state = (h, c), each (1, B, D)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.lstm = nn.LSTM(d_model, d_model, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(x)[0]  # (B, L, D)

    def step(self, x_t: torch.Tensor, state=None):
        y, state = self.lstm(x_t[:, None], state)  # (B, 1, D)
        return y[:, 0], state


class LSTM(Stack):
    """Stack of residual LSTM layers with RMSNorm and a final norm."""

    EXPORTABLE = "dynamic"

    def __init__(self, d_model: int, n_layers: int = 2, dropout: float = 0.0):
        super().__init__(d_model, [LSTMMixer(d_model) for _ in range(n_layers)], dropout)
