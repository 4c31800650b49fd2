"""Merge newly read rows with the history a store already holds (`mode=merge`), in one pass.

On a date both have, the new row wins; stored rows on other dates are kept. Only the tickers whose
new rows differ from what is stored (by content hash) are read back from the store, all in one read,
and merged by two joins over all of them at once: a re-ingest of 100,000 files costs no more per
ticker than a first ingest.
"""
from __future__ import annotations

from pathlib import Path

import polars as pl

from data_pipelines import segments
from data_pipelines import store as st

KEY = ["ticker", "date"]


def merge_stored(store: Path, rows: pl.DataFrame, manifest: pl.DataFrame, prefetched: pl.DataFrame | None = None
                 ) -> tuple[pl.DataFrame, int]:
    """(`rows` merged with the stored history of their tickers, sorted by ticker and date, each
    ticker contiguous; the number of stored rows whose values were replaced). `rows` holds ticker +
    PRICE_COLUMNS, each ticker's rows contiguous and by date; `prefetched`, if given, the stored
    rows of every ticker of `rows` the manifest has (read from the same version of the store)."""
    stats = segments.ticker_stats(rows).select("ticker", "content_hash")
    stored = stats.join(manifest.select("ticker", old="content_hash"), on="ticker")
    todo = stored.filter(pl.col("content_hash") != pl.col("old"))["ticker"]
    if todo.is_empty():
        return rows, 0
    mine = pl.col("ticker").is_in(todo.implode())
    old = st.read_prices(store, todo.to_list()) if prefetched is None else prefetched.filter(mine)
    old = old.cast(rows.select("ticker", *st.PRICE_COLUMNS).schema)
    new = rows.filter(mine)
    shared = old.join(new, on=KEY, how="semi").height
    replaced = shared - old.join(new, on=["ticker", *st.PRICE_COLUMNS], how="semi").height
    merged = pl.concat([old.join(new, on=KEY, how="anti"), new]).sort(KEY)
    return pl.concat([rows.filter(~mine), merged]), replaced
