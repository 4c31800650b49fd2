"""Row rules on typed prices. Each failing row gets the first reason that applies, in this order."""
from __future__ import annotations

import datetime as dt

import polars as pl

PRICES = ("open", "high", "low", "close")
VALUES = ("open", "high", "low", "close", "adj_close", "volume")


def value_reason(max_price: float = 1e9, max_volume: float = 1e15) -> pl.Expr:
    """The first failed value rule of a row, or null. adj_close may be null (column absent)."""
    prices = [pl.col(c) for c in (*PRICES, "adj_close")]
    values = [pl.col(c) for c in VALUES]
    return (pl.when(pl.any_horizontal([v.is_nan() | v.is_infinite() for v in values])).then(pl.lit("NaN/inf"))
            .when(pl.col("date") < dt.date(1800, 1, 1)).then(pl.lit("date before 1800"))
            .when(pl.any_horizontal([p <= 0 for p in prices])).then(pl.lit("non-positive price"))
            .when(pl.any_horizontal([p > max_price for p in prices]) | (pl.col("volume") > max_volume))
            .then(pl.lit("huge value"))
            .when(pl.col("volume") < 0).then(pl.lit("negative volume"))
            .when(pl.col("high") < pl.max_horizontal("open", "close")).then(pl.lit("high below max(open, close)"))
            .when(pl.col("low") > pl.min_horizontal("open", "close")).then(pl.lit("low above min(open, close)")))


def raw_values() -> pl.Expr:
    """The typed values of a row as text, for the quarantine table's `raw` column."""
    cols = [pl.col("ticker"), pl.col("date").cast(pl.String), *[pl.col(c).cast(pl.String) for c in VALUES]]
    return pl.concat_str([c.fill_null("") for c in cols], separator=",")


def split(rows: pl.DataFrame, reason: pl.Expr) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows passing, quarantined rows as file_id, line, reason, raw) under one reason expression."""
    why = rows.with_columns(reason.alias("_reason"))["_reason"]
    ok = why.is_null()
    if ok.all():  # the common case: no copy
        return rows, pl.DataFrame(schema=dict(file_id=pl.UInt32, line=pl.Int64, reason=pl.String, raw=pl.String))
    bad = rows.filter(~ok).select("file_id", "line", why.filter(~ok).alias("reason"), raw_values().alias("raw"))
    return rows.filter(ok), bad
