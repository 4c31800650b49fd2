"""The adaptive quantiles of `predict` (forecast/evaluation/adaptive.py), from what was served.

theta of a ticker at as-of session d is gamma times the sum of (miss - alpha) over the quantiles this
model version served for it before d, less its last horizon - 1 (whose outcomes are not known at d's
close), whose outcome is in the store: the same sum that train and evaluate run over the test period,
so a version served from its first session on gives the quantiles its test split was scored with.
The served rows come from the predictions table (their outcome from the store's closes) and, within
one run, from the sessions it has just made; nothing is kept anywhere else, so a rerun of any session
gives the same quantiles.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
from sqlalchemy import select

from forecast.evaluation import adaptive
from forecast.evaluation.quantiles import column
from forecast.inference.predictions import _session_filter, predictions


class ServedMisses:
    """Served quantiles and their outcomes, for theta per (ticker, level)."""

    def __init__(self, engine, name: str, version: str, horizon: int, taus: list[float], gamma: float,
                 store: str, before: dt.date):
        self.taus, self.gamma, self.horizon = taus, gamma, horizon
        self.cols = [column(t) for t in taus]
        self.rows = self._stored(engine, name, version, before, store)  # ticker, asof, q<p>..., y

    def _stored(self, engine, name: str, version: str, before: dt.date, store: str) -> pl.DataFrame:
        """The rows served for as-of sessions before `before`, with their realised returns."""
        from forecast.monitoring.realised import realised_returns

        c = predictions.c
        query = select(c.ticker, c.asof, c.target, c.quantiles, c.realised).where(
            _session_filter(name, version, self.horizon), c.asof < before, c.quantiles.is_not(None))
        with engine.connect() as conn:
            got = conn.execute(query).all()
        schema = dict(ticker=pl.String, asof=pl.Date, target=pl.Date, **{k: pl.Float64 for k in self.cols},
                      realised=pl.Float64)
        rows = pl.DataFrame([(t, a, g, *[(q or {}).get(k) for k in self.cols], r) for t, a, g, q, r in got],
                            schema=schema, orient="row")
        if rows.height == 0:
            return rows.drop("target", "realised").with_columns(y=pl.lit(None, pl.Float64))
        rows = realised_returns(store, rows).with_columns(y=pl.coalesce("realised", "new"))
        return rows.select("ticker", "asof", *self.cols, "y")

    def widen(self, day: dt.date, tickers: list[str], q: np.ndarray) -> np.ndarray:
        """q (n, Q) of `tickers` at as-of `day`, adapted by what was served before it."""
        th = self.thetas(day, tickers)  # (n, Q)
        return adaptive.widen(q, th, self.taus)

    def thetas(self, day: dt.date, tickers: list[str]) -> np.ndarray:
        """(n, Q) theta of each ticker at as-of `day`."""
        past = self.rows.filter(pl.col("asof") < day).sort("ticker", "asof")
        if self.horizon > 1:  # the last horizon - 1 served rows' outcomes are not known yet at `day`
            past = past.filter(pl.int_range(pl.len()).over("ticker") < pl.len().over("ticker") - (self.horizon - 1))
        past = past.filter(pl.col("y").is_not_null() & pl.col("y").is_finite())
        out = np.zeros((len(tickers), len(self.taus)))
        if past.height == 0:
            return out
        where = {t: i for i, t in enumerate(tickers)}
        for (ticker,), g in past.filter(pl.col("ticker").is_in(tickers)).group_by("ticker"):
            q, y = g.select(self.cols).to_numpy(), g["y"].to_numpy()  # (M, Q), (M,)
            out[where[ticker]] = adaptive.theta(q, y, self.taus, self.gamma)
        return out

    def add(self, day: dt.date, tickers: list[str], q: np.ndarray, y: np.ndarray) -> None:
        """The quantiles (n, Q) served at as-of `day` and their outcomes (n,) (NaN: not known yet)."""
        new = pl.DataFrame(dict(ticker=tickers, asof=[day] * len(tickers),
                                **{k: q[:, j] for j, k in enumerate(self.cols)}, y=y),
                           schema=self.rows.schema).with_columns(pl.col("y").fill_nan(None))
        kept = self.rows.filter(~((pl.col("asof") == day) & pl.col("ticker").is_in(tickers)))
        self.rows = pl.concat([kept, new])
