"""Duplicate rows: same ticker and date more than once.

Rule: the row read last wins. Files are read in sorted path order and rows in line order, so a later
file (a vendor's correction, a newer download) overrides an earlier one. Earlier rows with the same
values as the winner are exact duplicates: dropped and counted in `duplicates`. Earlier rows with
different values are conflicts: quarantined as "conflicting duplicate" with their raw values, so
`rows_read = rows_stored + rows_quarantined + duplicates` still holds.

Fast path: when every ticker's rows form one run of strictly increasing dates (one file per ticker,
already sorted), there is nothing to do; only the other tickers are sorted and grouped.
"""
from __future__ import annotations

import polars as pl

from data_pipelines.validate import VALUES, raw_values


def dirty_tickers(rows: pl.DataFrame) -> pl.Series:
    """Tickers whose rows are not one run of strictly increasing dates in read order."""
    same = pl.col("ticker") == pl.col("ticker").shift(1)
    flags = rows.select("ticker", step_bad=same & (pl.col("date") <= pl.col("date").shift(1)),
                        run_start=~same.fill_null(False))
    if flags["run_start"].sum() == rows["ticker"].n_unique() and not flags["step_bad"].any():
        return pl.Series("ticker", [], pl.String)
    runs = flags.filter("run_start").group_by("ticker").len().filter(pl.col("len") > 1)["ticker"]
    bad_steps = flags.filter("step_bad")["ticker"]
    return pl.concat([runs, bad_steps]).unique()


def dedup(rows: pl.DataFrame) -> tuple[pl.DataFrame, int, pl.DataFrame]:
    """(kept rows sorted by ticker and date within each ticker, exact duplicates, conflict quarantine)."""
    dirty = dirty_tickers(rows)
    if dirty.is_empty():
        return rows, 0, pl.DataFrame(schema=dict(file_id=pl.UInt32, line=pl.Int64, reason=pl.String, raw=pl.String))
    is_dirty = pl.col("ticker").is_in(dirty.implode())
    clean, messy = rows.filter(~is_dirty), rows.filter(is_dirty)
    messy = messy.sort("ticker", "date", "file_id", "line")
    key = ["ticker", "date"]
    winner = pl.int_range(pl.len()).over(key) == pl.len().over(key) - 1
    same = pl.all_horizontal([pl.col(c).eq_missing(pl.col(c).last().over(key)) for c in VALUES])
    messy = messy.with_columns(_win=winner, _same=same)
    kept = messy.filter("_win").drop("_win", "_same")
    exact = messy.filter(~pl.col("_win") & pl.col("_same")).height
    conflicts = messy.filter(~pl.col("_win") & ~pl.col("_same")).select(
        "file_id", "line", pl.lit("conflicting duplicate").alias("reason"), raw_values().alias("raw"))
    return pl.concat([clean, kept]), exact, conflicts
