"""Realised performance of stored predictions: the realised return of each prediction once its
target session's close is in the store, then per-session scores.

IC: the cross-sectional Pearson correlation of forecast and realised return per as-of session
(several tickers), or per block of `block` sessions (one ticker), as `evaluation.metrics.ic_series`
computes it for train and evaluate; rolling means over 20 and 60 sessions, ICIR (mean / std of the
IC over 60), the hit rate (sign agreement), and the net return of the sign strategy with `cost_bps`
per unit of turnover (`evaluation.backtest.daily_returns`).
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
from sqlalchemy import bindparam, select
from sqlalchemy.engine import Engine

from data_pipelines.store import read_prices
from forecast.evaluation.backtest import daily_returns
from forecast.evaluation.metrics import ic_groups, ic_series
from forecast.inference.predictions import _session_filter, predictions


def stored(engine: Engine, model: str, version: str, horizon: int, last: dt.date) -> pl.DataFrame:
    """(ticker, asof, target, forecast, realised) of this model version up to as-of `last`."""
    c = predictions.c
    query = (select(c.ticker, c.asof, c.target, c.forecast, c.realised)
             .where(_session_filter(model, version, horizon), c.asof <= last).order_by(c.asof, c.ticker))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    schema = dict(ticker=pl.String, asof=pl.Date, target=pl.Date, forecast=pl.Float64, realised=pl.Float64)
    return pl.DataFrame([tuple(r) for r in rows], schema=schema, orient="row")


def realised_returns(store: str, frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` (ticker, asof, target, ...) with `new` = log(close[target] / close[asof]) from the store
    where both closes are there (null otherwise); the store's close is the adjusted one."""
    tickers = frame["ticker"].unique().sort().to_list()
    closes = read_prices(store, tickers).select("ticker", "date", "close")
    at = closes.rename({"date": "asof", "close": "c0"})
    to = closes.rename({"date": "target", "close": "c1"})
    out = frame.join(at, on=["ticker", "asof"], how="left").join(to, on=["ticker", "target"], how="left")
    return out.with_columns(new=(pl.col("c1") / pl.col("c0")).log()).drop("c0", "c1")


def fill(engine: Engine, store: str, frame: pl.DataFrame, model: str, version: str, horizon: int) -> pl.DataFrame:
    """Write the realised return of every row that has none yet and whose target close is in the store
    (one transaction); returns `frame` with `realised` filled. A filled row is never rewritten."""
    todo = frame.filter(pl.col("realised").is_null())
    if todo.height == 0:
        return frame
    done = realised_returns(store, todo).filter(pl.col("new").is_not_null() & pl.col("new").is_finite())
    if done.height:
        c = predictions.c
        now = dt.datetime.now(dt.timezone.utc)
        update = (predictions.update()
                  .where(_session_filter(model, version, horizon), c.ticker == bindparam("t"), c.asof == bindparam("a"),
                         c.realised.is_(None))
                  .values(realised=bindparam("r"), realised_at=now))
        with engine.begin() as conn:
            conn.execute(update, [dict(t=t, a=a, r=r) for t, a, r in done.select("ticker", "asof", "new").iter_rows()])
    new = done.select("ticker", "asof", "new")
    return (frame.join(new, on=["ticker", "asof"], how="left")
            .with_columns(realised=pl.coalesce("realised", "new")).drop("new"))


def session_scores(frame: pl.DataFrame, block: int, cost_bps: float, horizon: int) -> pl.DataFrame:
    """Per session (or block, one ticker) with realised returns: date, n, ic, rank_ic, hit, net, and
    the rolling ic_20, ic_60, icir_60; sorted by date."""
    f = frame.filter(pl.col("realised").is_not_null()).rename({"asof": "date", "forecast": "pred"})
    if f.height == 0:
        return pl.DataFrame(schema=dict(date=pl.Date, n=pl.UInt32, ic=pl.Float64, rank_ic=pl.Float64))
    ics = ic_series(f, "pred", block)
    hit = (pl.col("pred").sign() * pl.col("realised").sign()) > 0
    n = (f.sort("date").group_by(ic_groups(f, block).alias("group"), maintain_order=True)  # a block: one ticker
         .agg(pl.col("date").first(), n=pl.len(), hit=hit.mean()).drop("group"))
    net = daily_returns(f, "pred", "sign", cost_bps=cost_bps, horizon=horizon).select("date", "net")
    out = ics.join(n, on="date", how="left").join(net, on="date", how="left").sort("date")
    ic = pl.col("ic")
    return out.with_columns(ic_20=ic.rolling_mean(20, min_samples=10), ic_60=ic.rolling_mean(60, min_samples=20),
                            icir_60=ic.rolling_mean(60, min_samples=20) / ic.rolling_std(60, min_samples=20))


def standardised(scores: pl.DataFrame) -> np.ndarray:
    """(S,) the Fisher z of each session's rank IC, scaled to unit variance under a constant relation:
    atanh(rank_ic) * sqrt((n - 3) / 1.06); so the detector's threshold does not depend on the number
    of tickers (Fieller, Hartley and Pearson's variance of the Spearman z)."""
    r = np.clip(scores["rank_ic"].to_numpy().astype(np.float64), -0.999, 0.999)
    n = np.maximum(scores["n"].to_numpy().astype(np.float64), 4.0)
    return np.arctanh(r) * np.sqrt((n - 3.0) / 1.06)
