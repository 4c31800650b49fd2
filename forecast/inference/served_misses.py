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
    """Per served row: ticker, asof and e_<level> = miss - alpha (null while its outcome is unknown)."""

    def __init__(self, engine, name: str, version: str, horizon: int, taus: list[float], gamma: float,
                 store: str, before: dt.date):
        self.taus, self.gamma, self.horizon = taus, gamma, horizon
        self.cols = [column(t) for t in taus]
        self.rows = self._stored(engine, name, version, before, store)

    def _stored(self, engine, name: str, version: str, before: dt.date, store: str) -> pl.DataFrame:
        """The rows served for as-of sessions before `before`, their outcomes from the store."""
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
        y = np.zeros(0)
        if rows.height:
            y = realised_returns(store, rows).select(pl.coalesce("realised", "new"))[:, 0].to_numpy()
        return self._excess(rows["ticker"].to_list(), rows["asof"].to_list(), rows.select(self.cols).to_numpy(), y)

    def _excess(self, tickers: list, asofs: list, q: np.ndarray, y: np.ndarray) -> pl.DataFrame:
        """ticker, asof, e_<level> of served quantiles q (n, Q) and outcomes y (n,) (NaN: unknown)."""
        y = np.asarray(y, dtype=np.float64)
        e = adaptive.misses(q, y, self.taus) - adaptive.alphas(self.taus)[None, :]  # (n, Q)
        e[~np.isfinite(y)] = np.nan
        frame = pl.DataFrame(dict(ticker=tickers, asof=asofs, **{f"e_{k}": e[:, j] for j, k in enumerate(self.cols)}),
                             schema=dict(ticker=pl.String, asof=pl.Date, **{f"e_{k}": pl.Float64 for k in self.cols}))
        return frame.with_columns(pl.col(f"e_{k}").fill_nan(None) for k in self.cols)

    def widen(self, day: dt.date, tickers: list[str], q: np.ndarray) -> np.ndarray:
        """q (n, Q) of `tickers` at as-of `day`, adapted by what was served before it."""
        return adaptive.widen(q, self.thetas(day, tickers), self.taus)

    def thetas(self, day: dt.date, tickers: list[str]) -> np.ndarray:
        """(n, Q) theta of each ticker at as-of `day`: gamma x the sum of e over its known rows."""
        past = self.rows.filter(pl.col("asof") < day)
        if self.horizon > 1:  # the last horizon - 1 served rows' outcomes are not known yet at `day`
            last = pl.col("asof").rank("ordinal", descending=True).over("ticker")
            past = past.filter(last > self.horizon - 1)
        sums = past.drop_nulls().group_by("ticker").agg(pl.col(f"e_{k}").sum() for k in self.cols)
        want = pl.DataFrame(dict(ticker=tickers), schema=dict(ticker=pl.String))
        got = want.join(sums, on="ticker", how="left", maintain_order="left").fill_null(0.0)
        return self.gamma * got.select(f"e_{k}" for k in self.cols).to_numpy()

    def add(self, day: dt.date, tickers: list[str], q: np.ndarray, y: np.ndarray) -> None:
        """The quantiles (n, Q) served at as-of `day` and their outcomes (n,) (NaN: not known yet)."""
        kept = self.rows.filter(~((pl.col("asof") == day) & pl.col("ticker").is_in(tickers)))
        self.rows = pl.concat([kept, self._excess(tickers, [day] * len(tickers), q, y)])
