"""Ticker shards for DDP (`data.shard_tickers=true`): each rank reads only its tickers from the store.

`MarketData` then runs in two steps. Before the DDP processes exist, `survey` reads the (ticker, date)
columns of every requested ticker, a chunk of tickers at a time, never their prices: the split dates,
the anchors per split, the ticker vocabulary and each ticker's rows (what the shards are balanced on).
Every rank computes the same survey. After the process group is up (Lightning's `setup("fit")`), a
rank reads its own shard, and every statistic fitted on the training period is a sum that `all_sum`
reduces across ranks: feature mean and std, target mean and std, and the per-date means of the
cross-sectional labels. With one process the reductions are the identity, so the same code on the
whole store gives the values of the unsharded path (tests/test_shards.py holds the two equal).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

SURVEY_ROWS = 1 << 22  # (ticker, date) rows surveyed at a time


@dataclass
class Survey:
    """What every rank knows before it reads a price: the resolved split dates, the anchor counts
    per split, the vocabulary (tickers with a training anchor), the distinct dates, and per ticker its
    manifest rows and content hash (a shard read checks that the store did not change since)."""
    val_start: object
    test_start: object
    counts: dict[str, int]
    vocab: list[str]
    dates: np.ndarray  # (D,) int32 days since 1970, sorted: the index of the per-date sums
    manifest: pl.DataFrame  # ticker, rows, content_hash of the requested tickers, in ticker order


def rank_and_world() -> tuple[int, int]:
    ready = torch.distributed.is_available() and torch.distributed.is_initialized()
    return (torch.distributed.get_rank(), torch.distributed.get_world_size()) if ready else (0, 1)


def all_sum(a: np.ndarray) -> np.ndarray:
    """`a` summed elementwise over the ranks (float64); `a` itself in one process."""
    if rank_and_world()[1] == 1:
        return np.asarray(a, dtype=np.float64)
    t = torch.from_numpy(np.array(a, dtype=np.float64))  # a writable copy
    torch.distributed.all_reduce(t)
    return t.numpy()


def all_max(n: int) -> int:
    if rank_and_world()[1] == 1:
        return n
    t = torch.tensor([n], dtype=torch.int64)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def plan(manifest: pl.DataFrame, world: int) -> list[list[str]]:
    """`world` shards of the manifest's tickers, balanced on rows: the largest ticker first, each to
    the lightest shard so far (ties to the lowest rank); each shard in ticker order. Deterministic."""
    load, shards = [0] * world, [[] for _ in range(world)]
    by_size = manifest.sort(["rows", "ticker"], descending=[True, False])
    for ticker, rows in by_size.select("ticker", "rows").iter_rows():
        r = min(range(world), key=lambda i: (load[i], i))
        load[r] += rows
        shards[r].append(ticker)
    return [sorted(s) for s in shards]


def survey(snap, tickers: list[str] | None, bounds: tuple, assign) -> Survey:
    """The survey of `tickers` (all when None) in the pinned store snapshot `snap`. `bounds` are
    MarketData's (val_start, test_start, val_frac, test_frac); `assign(frame, val_start, test_start)`
    labels a (ticker, date, target) frame's anchors exactly as the full read does."""
    from forecast.data.market import split_dates

    rows = snap.scan_prices(tickers)  # StoreError names unknown tickers
    entries = snap.manifest if tickers is None else snap.manifest.filter(pl.col("ticker").is_in(tickers))
    entries = entries.select("ticker", "rows", "content_hash").sort("ticker")
    dates = rows.select("date").unique().collect()["date"]
    val_start, test_start = split_dates(dates, *bounds)
    counts, vocab = dict(train=0, val=0, test=0), []
    for chunk in _chunks(entries):
        part = snap.scan_prices(chunk).select("ticker", "date").collect().sort("ticker", "date", maintain_order=True)
        part = assign(part, val_start, test_start)
        for split, n in part.group_by("split").len().drop_nulls().iter_rows():
            counts[split] += n
        vocab += part.filter(pl.col("split") == "train")["ticker"].unique().to_list()
    days = dates.sort().cast(pl.Int32).to_numpy()
    return Survey(val_start, test_start, counts, sorted(vocab), days, entries)


def _chunks(entries: pl.DataFrame) -> list[list[str]]:
    """The tickers in runs of about SURVEY_ROWS rows (a ticker is never split)."""
    out, run, size = [], [], 0
    for ticker, rows in entries.select("ticker", "rows").iter_rows():
        if run and size + rows > SURVEY_ROWS:
            out.append(run)
            run, size = [], 0
        run.append(ticker)
        size += rows
    return out + [run] if run else out


def mean_std(df: pl.DataFrame, columns: list[str], rows: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Per column, over `rows` and across ranks, ignoring NaN and null: the mean and the std (ddof=1),
    in two reduced passes (sums, then squared deviations), as stable as polars' one-process std."""
    kept = [pl.col(c).filter(rows).drop_nans() for c in columns]
    n = all_sum(df.select(*[k.count().alias(c) for k, c in zip(kept, columns)]).to_numpy()[0])
    total = all_sum(df.select(*[k.sum().alias(c) for k, c in zip(kept, columns)]).to_numpy()[0])
    mean = total / np.maximum(n, 1)
    dev = [((k - m) ** 2).sum().alias(c) for k, c, m in zip(kept, columns, mean)]
    ss = all_sum(df.select(*dev).to_numpy()[0])
    return mean, np.sqrt(ss / np.maximum(n - 1, 1))


def cross_sectional_label(df: pl.DataFrame, how: str, dates: np.ndarray) -> np.ndarray:
    """forecast.data.market.cross_sectional_label across the ranks' shards: the per (date, split) sums
    of the anchors' targets are summed over ranks on the survey's date index `dates` (D,)."""
    from forecast.data.market import SPLITS
    from forecast.data.market import cross_sectional_label as one_process

    if how == "raw":
        return one_process(df, how)
    anchor = (pl.col("split").is_not_null() & pl.col("target").is_not_null()).alias("anchor")
    keys = df.select(anchor, split=pl.col("split").replace_strict(
        {s: i for i, s in enumerate(SPLITS)}, default=0, return_dtype=pl.Int64))
    cell = np.searchsorted(dates, df["date"].cast(pl.Int32).to_numpy()) * len(SPLITS) + keys["split"].to_numpy()
    on = keys["anchor"].to_numpy()  # (N,)
    y = np.where(on, df["target"].fill_null(0.0).to_numpy(), 0.0)  # (N,)
    size = len(dates) * len(SPLITS)
    count = all_sum(np.bincount(cell[on], minlength=size))  # (D * 3,)
    mean = all_sum(np.bincount(cell[on], weights=y[on], minlength=size)) / np.maximum(count, 1)
    out = y - mean[cell]
    if how == "cs_zscore":
        sd = np.sqrt(all_sum(np.bincount(cell[on], weights=out[on] ** 2, minlength=size)) / np.maximum(count, 1))
        out = np.where(sd[cell] > 0, out / np.where(sd[cell] > 0, sd[cell], 1.0), 0.0)
    return np.where(on, out, 0.0)
