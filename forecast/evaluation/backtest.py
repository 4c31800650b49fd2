"""A cost-aware long/short backtest of forecasts on a predictions frame (ticker, date, realised, pred).

Positions, chosen each session from that session's forecasts only:
- sign: each ticker long (+) or short (-) by the sign of its forecast, weight 1/n for n tickers that
  session; a zero forecast holds nothing.
- topk: rank the session's tickers by forecast; long the top k and short the bottom k, 1/(2k) each
  (k shrinks to n // 2 on sessions with fewer than 2k tickers; nothing is held on a session where
  every forecast is equal).
Returns per session: gross = sum_i w_i * (exp(realised_i) - 1) / h, with h the horizon: a forecast
of the h-session return is held by h staggered sub-books of weight 1/h each (h = 1: daily rebalance).
turnover = sum_i |w_i - w_i(previous session)| / h (the first session enters from cash);
net = gross - turnover * cost_bps / 10^4. The benchmark is equal-weight buy-and-hold of the same
tickers (no cost).
Summary, with 252 sessions a year:
- ann_return: mean net return x 252 (arithmetic, as in Qlib).
- sharpe: mean / std of the net return x sqrt(252) (0 for a book that never trades).
- info_ratio: the same for the net return minus the benchmark's.
- max_drawdown: the worst fall of compounded wealth from its running peak (<= 0; -0.2 = 20% down).
- turnover: mean turnover per session (2.0 = the whole book flipped from long to short each day).
"""
from __future__ import annotations

import math

import numpy as np
import polars as pl

PERIODS = 252  # sessions per year
STRATEGIES = ("sign", "topk")


def weights(frame: pl.DataFrame, pred_col: str = "pred", strategy: str = "sign", top_k: int = 1) -> pl.Series:
    """Portfolio weight of each row, from the forecasts of its session only."""
    n = pl.len().over("date")
    if strategy == "sign":
        return frame.select(w=pl.col(pred_col).sign() / n)["w"]
    if strategy == "topk":
        k = pl.min_horizontal(pl.lit(top_k), n // 2)
        k = pl.when(pl.col(pred_col).n_unique().over("date") > 1).then(k).otherwise(0)  # all equal: no view
        rank = pl.col(pred_col).rank("ordinal", descending=True).over("date")  # 1 = highest forecast
        w = pl.when(k == 0).then(0.0).when(rank <= k).then(0.5 / k).when(rank > n - k).then(-0.5 / k).otherwise(0.0)
        return frame.select(w=w)["w"]
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def daily_returns(frame: pl.DataFrame, pred_col: str = "pred", strategy: str = "sign", top_k: int = 1,
                  cost_bps: float = 0.0, horizon: int = 1) -> pl.DataFrame:
    """(date, gross, turnover, cost, net, benchmark) per session."""
    f = frame.with_columns(w=weights(frame, pred_col, strategy, top_k), r=pl.col("realised").exp() - 1)
    w = f.pivot("ticker", index="date", values="w", sort_columns=True).sort("date")
    r = f.pivot("ticker", index="date", values="r", sort_columns=True).sort("date")
    W = w.drop("date").to_numpy().astype(np.float64)  # (T, N), NaN where a ticker has no row
    R = r.drop("date").to_numpy().astype(np.float64)  # (T, N)
    W0 = np.nan_to_num(W)
    gross = (W0 * np.nan_to_num(R)).sum(axis=1) / horizon  # (T,)
    turnover = np.abs(np.diff(W0, axis=0, prepend=0.0)).sum(axis=1) / horizon  # (T,)
    cost = turnover * cost_bps / 1e4
    benchmark = np.nanmean(R, axis=1) / horizon
    return pl.DataFrame(dict(date=w["date"], gross=gross, turnover=turnover, cost=cost, net=gross - cost,
                             benchmark=benchmark))


def sharpe(returns: np.ndarray) -> float:
    std = returns.std(ddof=1) if len(returns) > 1 else 0.0
    if std == 0 or not math.isfinite(std):
        return 0.0 if np.all(returns == 0) else math.nan
    return float(returns.mean() / std * math.sqrt(PERIODS))


def max_drawdown(returns: np.ndarray) -> float:
    wealth = np.cumprod(1 + returns)
    return float(np.min(wealth / np.maximum.accumulate(np.maximum(wealth, 1.0)) - 1, initial=0.0))


def summary(daily: pl.DataFrame) -> dict[str, float]:
    net, bench = daily["net"].to_numpy(), daily["benchmark"].to_numpy()
    return dict(sharpe=sharpe(net), ann_return=float(net.mean() * PERIODS), max_drawdown=max_drawdown(net),
                turnover=float(daily["turnover"].mean()), info_ratio=sharpe(net - bench))


def strategy_metrics(frame: pl.DataFrame, pred_col: str = "pred", strategy: str = "sign", top_k: int = 1,
                     cost_bps: float = 0.0, horizon: int = 1) -> dict[str, float]:
    return summary(daily_returns(frame, pred_col, strategy, top_k, cost_bps, horizon))
