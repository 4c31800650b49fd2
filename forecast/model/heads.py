"""Heads read the backbone's last position (the anchor session) and predict the target.

Every head takes the backbone's output and the encoders' parts {name: ((B, L, D), (B, L) mask)}, as
the fusion saw them (after modality dropout); `PointHead` ignores the parts."""
from __future__ import annotations

import torch
from torch import nn

from forecast.model.fusion import Parts


class PointHead(nn.Module):
    """Point forecast of the (scaled) forward return. `takes` declares the modalities the head reads
    for itself, out of the fusion's and backbone's sight: none here."""

    def __init__(self, d_model: int, dropout: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(d_model, 1)

    def takes(self, modalities: list[str]) -> set[str]:
        return set()

    def forward(self, h: torch.Tensor, parts: Parts | None = None) -> torch.Tensor:
        return self.proj(self.drop(h[:, -1])).squeeze(-1)  # (B, L, D) -> (B,)

    def point(self, pred: torch.Tensor) -> torch.Tensor:
        """The point forecast in the head's output: the output itself here, (B,)."""
        return pred

    def loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(pred, y)


class FactorHead(PointHead):
    """The point forecast plus each ticker's exposures to a few shared factors, as in a conditional
    factor model: y = w . h_T + sum_k beta_k(ticker) f_k(t), where the factors f(t) (B, K) are a linear
    map of the date-level modalities' embeddings at the anchor (calendar, exogenous: the same for every
    ticker on a date) and the loadings beta (B, K) a linear map of the ticker's embedding.

    A per-ticker sensitivity to a macro series or to the weekday is a product of two inputs; the
    backbone can learn it only through its nonlinearities, slowly, while it overfits elsewhere. Here it
    is one bilinear term with K x D parameters per modality. The loadings start at zero, so the head
    starts as `PointHead`. Without the ticker modality, or without any date-level one, it is
    `PointHead`; a masked modality (absent, or dropped in training) contributes no factor.

    `exclusive`: the ticker and the date-level modalities reach the forecast only through this term,
    not through the fusion and the backbone. With 50 tickers and a few years of sessions, a backbone
    that sees the ticker beside a near-unique daily macro value can fit each ticker's noise date by
    date; the bilinear term cannot (experiments/modality_ablation). Ignored when the term is absent."""

    def __init__(self, d_model: int, dropout: float = 0.0, n_factors: int = 4,
                 shared: tuple[str, ...] = ("calendar", "exogenous"), loading: str = "ticker",
                 exclusive: bool = False):
        super().__init__(d_model, dropout)
        if n_factors < 1:
            raise ValueError(f"n_factors: must be at least 1, got {n_factors}")
        self.shared, self.loading, self.exclusive = tuple(shared), loading, exclusive
        self.factors = nn.ModuleDict({m: nn.Linear(d_model, n_factors, bias=False) for m in self.shared})
        self.loadings = nn.Linear(d_model, n_factors, bias=False)
        nn.init.zeros_(self.loadings.weight)

    def takes(self, modalities: list[str]) -> set[str]:
        """The modalities that only this head sees: with `exclusive`, the loading modality and the
        date-level ones, when the loading modality and at least one date-level one are in use."""
        shared = set(self.shared) & set(modalities)
        return shared | {self.loading} if self.exclusive and shared and self.loading in modalities else set()

    def forward(self, h: torch.Tensor, parts: Parts | None = None) -> torch.Tensor:
        y = super().forward(h)  # (B,)
        parts = parts or {}
        present = [m for m in self.shared if m in parts]
        if self.loading not in parts or not present:
            return y
        e, m = parts[self.loading]
        beta = self.loadings(e[:, -1] * m[:, -1, None])  # (B, D) -> (B, K)
        f = sum(self.factors[n](parts[n][0][:, -1] * parts[n][1][:, -1, None]) for n in present)  # (B, K)
        return y + (beta * f).sum(-1)  # (B,)


class QuantileHead(PointHead):
    """Quantiles of the (scaled) forward return, trained with the pinball loss: (B, L, D) -> (B, Q).

    The median is one linear output; each further level is the next one inward plus a softplus
    increment, so q_0.1 <= q_0.5 <= q_0.9 for every input (non-crossing by construction). `point`
    gives the median, the forecast that train and evaluate score as `pred`."""

    def __init__(self, d_model: int, dropout: float = 0.0, quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)):
        super().__init__(d_model, dropout)
        taus = sorted(float(q) for q in quantiles)
        if 0.5 not in taus or len(set(taus)) != len(taus) or not all(0 < q < 1 for q in taus):
            raise ValueError(f"quantiles: distinct levels in (0, 1) including 0.5, got {list(quantiles)}")
        self.taus, self.mid = taus, taus.index(0.5)
        self.proj = nn.Linear(d_model, len(taus))
        self.register_buffer("tau", torch.tensor(taus), persistent=False)

    def forward(self, h: torch.Tensor, parts: Parts | None = None) -> torch.Tensor:
        z = self.proj(self.drop(h[:, -1]))  # (B, Q)
        gaps = nn.functional.softplus(z)  # (B, Q) positive steps between neighbouring levels
        median = z[:, self.mid : self.mid + 1]  # (B, 1)
        below = median - gaps[:, : self.mid].flip(-1).cumsum(-1).flip(-1)  # (B, mid)
        above = median + gaps[:, self.mid + 1 :].cumsum(-1)  # (B, Q - mid - 1)
        return torch.cat([below, median, above], dim=-1)  # (B, Q), increasing along Q

    def point(self, pred: torch.Tensor) -> torch.Tensor:
        return pred[:, self.mid]  # (B, Q) -> (B,)

    def loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d = y[:, None] - pred  # (B, Q)
        return torch.maximum(self.tau * d, (self.tau - 1) * d).mean()
