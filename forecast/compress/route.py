"""Specialists with routing: per request (ticker, as-of session) a router picks a small specialist or
the full model, and the routed model runs each one only on its own requests (gather, run, scatter).

Slices say which requests a specialist is for, from inputs known at the as-of close:
- `NoNews`: no headline at the as-of session (the news encoder has nothing to read there);
- `Calm`: the window's trailing volatility below a quantile of the training windows' (the regime);
- `TickerCluster`: the ticker in one k-means cluster of the full model's ticker embeddings.
The `Router` takes the first slice holding a request as its candidate, then a logistic gate on cheap
inputs (fitted on validation: how likely that specialist is to stay close to the full model there)
and a range check; below the threshold, or out of the training range, the full model serves it.
`RoutedForecaster` keeps the interface `predict` uses (`forward(**batch)`, `predict_step`, `head`),
and the full model never runs on a request a specialist serves.
"""
from __future__ import annotations

import torch
from torch import nn

FALLBACK = -1  # route code of the full model


class NoNews(nn.Module):
    """Requests without a headline at the as-of session (`invert`: with one)."""

    def __init__(self, invert: bool = False):
        super().__init__()
        self.invert = bool(invert)

    def fit(self, teacher, batches: list[dict], features: list[str]) -> None:
        """Nothing to fit."""

    def forward(self, batch: dict) -> torch.Tensor:
        return has_news(batch) if self.invert else ~has_news(batch)  # (B,) bool


def has_news(batch: dict) -> torch.Tensor:
    """(B,) whether a headline arrived at the as-of session (the window's last step)."""
    x = batch["x"]
    if "news_tokens" in batch:
        return (batch["news_tokens"][:, -1] > 0).any(-1)  # (B, L, K) -> (B,)
    if "news_emb_mask" in batch:
        return batch["news_emb_mask"][:, -1].bool()  # (B, L) -> (B,)
    return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)  # a model without news


class Calm(nn.Module):
    """Requests whose window's standard deviation of `feature` is at most the `quantile` of the
    training windows' (fitted by `fit`)."""

    def __init__(self, quantile: float = 0.7, feature: str = "ret"):
        super().__init__()
        self.quantile, self.feature = float(quantile), str(feature)
        self.column = 0
        self.register_buffer("limit", torch.tensor(float("inf")))

    def vol(self, batch: dict) -> torch.Tensor:
        return batch["x"][:, :, self.column].std(dim=1)  # (B, L, F) -> (B,)

    def fit(self, teacher, batches: list[dict], features: list[str]) -> None:
        self.column = features.index(self.feature)
        vols = torch.cat([self.vol(b) for b in batches])  # (N,)
        self.limit = torch.quantile(vols.double(), self.quantile).float()

    def forward(self, batch: dict) -> torch.Tensor:
        return self.vol(batch) <= self.limit  # (B,) bool


class TickerCluster(nn.Module):
    """Requests of tickers in cluster `cluster` (clusters ordered by size, largest first) of a k-means
    over the full model's ticker embeddings; no ticker when the model has no ticker encoder."""

    def __init__(self, k: int = 4, cluster: int = 0):
        super().__init__()
        self.k, self.cluster = int(k), int(cluster)
        self.register_buffer("member", torch.zeros(1, dtype=torch.bool))

    def fit(self, teacher, batches: list[dict], features: list[str]) -> None:
        from sklearn.cluster import KMeans

        encoders = getattr(teacher, "encoders", None)
        if encoders is None or "ticker" not in encoders:
            return
        emb = encoders["ticker"].embed.weight.detach()[1:].double().numpy()  # (V, D): row 0 is the unseen ticker
        labels = KMeans(n_clusters=min(self.k, len(emb)), n_init=10, random_state=0).fit_predict(emb)  # (V,)
        by_size = sorted(set(labels), key=lambda c: (-(labels == c).sum(), c))
        member = torch.zeros(len(emb) + 1, dtype=torch.bool)
        if self.cluster < len(by_size):
            member[1:] = torch.from_numpy(labels == by_size[self.cluster])
        self.member = member

    def forward(self, batch: dict) -> torch.Tensor:
        ids = batch["ticker"].clamp(max=len(self.member) - 1)
        return self.member[ids]  # (B,) bool


def cheap_features(batch: dict) -> torch.Tensor:
    """(B, F + 3) inputs the gate reads: the as-of step's price features, the window's volatility of
    the first feature, its largest |feature| and whether news arrived at the as-of session."""
    x = batch["x"]  # (B, L, F)
    return torch.cat([x[:, -1], x[:, :, 0].std(dim=1, keepdim=True), x.abs().amax(dim=(1, 2))[:, None],
                      has_news(batch).float()[:, None]], dim=1)  # (B, F + 3)


class Router(nn.Module):
    """The first slice holding a request names its candidate specialist; its gate's probability at
    least `threshold` and the inputs within the training range let the specialist serve it. `auto`
    thresholds are chosen on validation (specialise.py); `attach` adds the fitted slices and gates."""

    def __init__(self, threshold: float | str = "auto", tolerance: float = 0.25, min_corr: float = 0.97,
                 max_ic_drop: float = 0.003, range_quantile: float = 0.999, alert_sessions: int = 20):
        super().__init__()
        self.alert_sessions = int(alert_sessions)  # sessions after a drift alert that the full model serves alone
        self.force = False  # set by predict on sessions under a drift alert
        self.auto = threshold == "auto"
        self.tolerance, self.min_corr, self.max_ic_drop = float(tolerance), float(min_corr), float(max_ic_drop)
        self.range_quantile = float(range_quantile)
        self.register_buffer("threshold", torch.tensor(0.5 if self.auto else float(threshold)))
        self.register_buffer("bound", torch.tensor(float("inf")))
        self.slices, self.gates = nn.ModuleList(), nn.ModuleList()

    def attach(self, slices: list[nn.Module], gates: list[nn.Linear], bound: float) -> None:
        self.slices, self.gates = nn.ModuleList(slices), nn.ModuleList(gates)
        self.bound = torch.tensor(float(bound))

    def candidates(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) the first slice holding each request (FALLBACK: none, or out of range), (B,) its gate's
        probability."""
        phi = cheap_features(batch)  # (B, C)
        cand = torch.full((phi.shape[0],), FALLBACK, dtype=torch.long, device=phi.device)
        for k in reversed(range(len(self.slices))):  # the first slice wins
            cand = torch.where(self.slices[k](batch), torch.full_like(cand, k), cand)
        probs = torch.stack([torch.sigmoid(g(phi)).squeeze(-1) for g in self.gates], 1) if len(self.gates) else \
            phi.new_zeros((phi.shape[0], 1))  # (B, K)
        conf = probs.gather(1, cand.clamp(min=0)[:, None]).squeeze(1)  # (B,)
        cand = torch.where(phi[:, -2] <= self.bound, cand, torch.full_like(cand, FALLBACK))  # out of range
        if getattr(self, "force", False):  # an active drift alert
            cand = torch.full_like(cand, FALLBACK)
        return cand, conf

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        cand, conf = self.candidates(batch)
        return route_at(cand, conf, self.threshold)  # (B,)


def route_at(cand: torch.Tensor, conf: torch.Tensor, threshold) -> torch.Tensor:
    """(B,) route codes: the candidate where its gate is confident enough, else FALLBACK."""
    return torch.where((cand >= 0) & (conf >= threshold), cand, torch.full_like(cand, FALLBACK))


def gather(batch: dict, idx: torch.Tensor) -> dict:
    return {k: v.index_select(0, idx) for k, v in batch.items()}  # each (n, ...)


class RoutedForecaster(nn.Module):
    """`forward(**batch)` -> (B,) (or (B, Q)) scaled forecasts: each specialist and the full model run
    only on the requests routed to them, and the outputs are scattered back into request order."""

    def __init__(self, full: nn.Module, specialists: dict[str, nn.Module], router: Router):
        super().__init__()
        self.full, self.specialists, self.router = full, nn.ModuleDict(specialists), router

    @property
    def head(self):  # predict reads `head.point` of a quantile head, serving `head.taus`
        return self.full.head

    def models(self) -> list[tuple[int, nn.Module]]:
        """(route code, model) of every route: the specialists in routing order, then the full model."""
        return [*enumerate(self.specialists.values()), (FALLBACK, self.full)]

    def forward(self, x: torch.Tensor, ticker: torch.Tensor | None = None, **inputs) -> torch.Tensor:
        batch = dict(x=x, **inputs, **({} if ticker is None else {"ticker": ticker}))
        if ticker is None:
            batch["ticker"] = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return self.run_routes(batch, self.router(**batch))

    def run_routes(self, batch: dict, route: torch.Tensor) -> torch.Tensor:
        out = None
        for code, model in self.models():
            idx = (route == code).nonzero().squeeze(1)  # (n,)
            if idx.numel() == 0:
                continue
            y = model(**gather(batch, idx))  # (n,) or (n, Q)
            if out is None:
                out = y.new_zeros((len(route), *y.shape[1:]))
            out[idx] = y  # scatter
        return out

    def predict_step(self, batch: dict, batch_idx: int = 0) -> torch.Tensor:
        from forecast.model.forecaster import NOT_INPUTS

        return self(**{k: v for k, v in batch.items() if k not in NOT_INPUTS})


def route_flops(routed: RoutedForecaster, batch: dict) -> dict[str, float]:
    """Analytic FLOPs of `routed(**batch)` by part (totals over the batch, not per request): the
    router, then each route on the requests it serves, counted on the very sub-batch it sees."""
    from forecast.compress.flops import flops_per_forecast

    names = [*routed.specialists, "full"]
    out = {"router": flops_per_forecast(routed.router, batch) * len(batch["x"])}
    route = routed.router(**batch)
    for (code, model), name in zip(routed.models(), names):
        idx = (route == code).nonzero().squeeze(1)
        out[name] = flops_per_forecast(model, gather(batch, idx)) * idx.numel() if idx.numel() else 0.0
    return out
