"""The inputs the model sees, made robust for drift checks, as groups of rows (dates (N,), values
(N, F), names):
- `price:<feature>`: its scale-free price features per (ticker, session), and with five tickers or
  more standardised across the session's tickers ((x - median) / (1.4826 MAD)), so that a market-wide
  change of volatility (a calm/stressed regime) is not input drift, while a change in the
  cross-section's shape is;
- `exogenous:<series>` and `exogenous:<series>:chg`: each series' level and change as
  `features.exogenous` builds them (z-scored with the training statistics), one row per session
  (they are the same for every ticker; repeating them would overstate the sample size);
- `news:rate`: the share of the session's tickers with a headline at that session, one row per session
  (a vendor feed that stops or floods is input drift of the news modality, whatever the headlines say).
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

from data_pipelines.store import read_news, read_prices
from forecast.data.market import price_features
from forecast.inference import features

Group = tuple[pl.Series, np.ndarray, list[str]]
CROSS_SECTION = 5  # tickers a session needs for its price features to be standardised across them


def frame_inputs(frame: pl.DataFrame, store: str, state: dict) -> list[Group]:
    """The groups of a price-feature frame (ticker, date, features...)."""
    cols = state["features"]
    if frame["ticker"].n_unique() >= CROSS_SECTION:
        med = {c: pl.col(c).median().over("date") for c in cols}
        mad = {c: (pl.col(c) - med[c]).abs().median().over("date") * 1.4826 for c in cols}
        frame = frame.with_columns(*[((pl.col(c) - med[c]) / (mad[c] + 1e-12)).alias(c) for c in cols])
    groups = [(frame["date"], frame.select(cols).to_numpy().astype(np.float64), [f"price:{f}" for f in cols])]
    if "exogenous" in state["modalities"] and frame.height:
        days = frame.select("date").unique().sort("date")
        exog = features.exogenous(days, store, state["exogenous"], state["exog_level_window"])
        z = np.where(exog["exog_mask"].numpy(), exog["exog"].numpy().astype(np.float64), np.nan)  # (D, 2S)
        groups.append((days["date"], z, [f"exogenous:{c}" for c in state["exogenous"]["columns"]]))
    if {"news", "news_minilm"} & set(state["modalities"]) and frame.height:
        groups.append(news_rate(frame, store))
    return groups


def news_rate(frame: pl.DataFrame, store: str) -> Group:
    """`news:rate` of each session of `frame`: the share of its (ticker, session) rows with a headline."""
    news = read_news(store).select("ticker", pl.col("session").alias("date")).unique().with_columns(hit=pl.lit(1.0))
    rate = (frame.select("ticker", "date").join(news, on=["ticker", "date"], how="left")
            .group_by("date").agg(pl.col("hit").fill_null(0.0).mean()).sort("date"))
    return rate["date"], rate["hit"].to_numpy().astype(np.float64)[:, None], ["news:rate"]


def model_inputs(store: str, state: dict, tickers: list[str], first: dt.date, last: dt.date) -> list[Group]:
    """The groups of every session from `first` to `last`."""
    frame = features.read_frame(store, state, tickers, first, last).filter(pl.col("date") >= first)
    frame = frame.filter(pl.col("pos") > 0)  # the first bar of a ticker has no previous close
    return frame_inputs(frame, store, state)


def training_inputs(store: str, state: dict, tickers: list[str]) -> list[Group]:
    """The groups of the model's training period (before its val_start)."""
    val_start = dt.date.fromisoformat(state["val_start"])
    prices = read_prices(store, tickers).filter(pl.col("date") < val_start)
    return frame_inputs(price_features(prices).filter(pl.col("ret").is_not_null()), store, state)
