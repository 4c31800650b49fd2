"""Naive baselines, forecasting the same test anchors as the model from information before them."""
from __future__ import annotations

import polars as pl


def zero(frame: pl.DataFrame, train: pl.DataFrame) -> pl.Series:
    """Random walk: tomorrow's expected log return is zero."""
    return pl.Series("pred", [0.0] * frame.height, dtype=pl.Float64)


def hist_mean(frame: pl.DataFrame, train: pl.DataFrame) -> pl.Series:
    """Each ticker's mean forward return over the training split (the pooled mean for unseen tickers)."""
    pooled = float(train["target"].mean())
    means = train.group_by("ticker").agg(pl.col("target").mean().alias("pred"))
    joined = frame.select("ticker").join(means, on="ticker", how="left", maintain_order="left")
    return joined["pred"].fill_null(pooled)


BASELINES = {"zero": zero, "hist_mean": hist_mean}
