"""Split and dividend adjustment from a vendor's Adj Close column."""
from __future__ import annotations

import polars as pl


def adjust(rows: pl.DataFrame) -> pl.DataFrame:
    """Scale OHLC by adj_close / close and volume by its inverse, where adj_close is present.

    The adjusted close equals the vendor's Adj Close, returns computed from the adjusted series carry
    no split jumps and include dividends, and price x volume (traded value) is unchanged.
    """
    f = pl.when(pl.col("adj_close").is_not_null()).then(pl.col("adj_close") / pl.col("close")).otherwise(1.0)
    return rows.with_columns(*[(pl.col(c) * f).alias(c) for c in ("open", "high", "low", "close")],
                             (pl.col("volume") / f).alias("volume"))
