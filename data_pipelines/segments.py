"""Price segments: the rows of many tickers in one Parquet file, in one of BUCKETS hash buckets.

    prices/bucket=<kk>/<digest>-<rows>.parquet
                                          ticker, date, open, high, low, close, volume, sorted by
                                          ticker and date; kk = crc32(ticker) mod BUCKETS; rows is
                                          the file's row count (older segments: `<digest>.parquet`)

A store of a hundred thousand tickers is a few hundred files, not a folder per ticker. The manifest
is the catalogue: its `file` column names the segment holding each ticker's live rows. A segment is
content-addressed (its name is a digest of its tickers' content hashes) and never modified: a write
puts the tickers it changes into one new segment per bucket they hash to, and the older segment of
a rewritten ticker keeps its dead rows until compaction. A reader takes a ticker's rows from the
segment the manifest names (a filter on the sorted ticker column, pushed down to row groups).

Compaction is size-tiered, as in log-structured stores: a new segment of bucket b also takes in the
live rows of every older segment of b that holds no more live rows than the new one has gathered so
far, or that is more than half dead. So a bucket keeps about log2(its rows / rows per write) segments,
a row is rewritten about that many times over its life, and dead rows stay below the live ones.

Stores written before segments existed hold one ticker per file, without a ticker column
(`prices/ticker=<quoted>/<hash>.parquet`); reads take both layouts, and a ticker moves into a
segment the next time it is written.
"""
from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

import numpy as np
import polars as pl

PRICE_COLUMNS = ["date", "open", "high", "low", "close", "volume"]
ROW_SCHEMA = dict(ticker=pl.String, date=pl.Date, open=pl.Float64, high=pl.Float64, low=pl.Float64,
                  close=pl.Float64, volume=pl.Float64)
BUCKETS = 64
SEGMENT_PREFIX = "prices/bucket="
FEW_ROWS = 2_000_000  # a read of at most this many rows joins instead of planning a scan per segment
ROW_GROUP = 65_536  # rows per Parquet row group: a one-ticker read skips the groups whose ticker range misses


def bucket_of(ticker: str) -> int:
    return zlib.crc32(ticker.encode()) % BUCKETS


def content_hash(df: pl.DataFrame) -> str:
    """A stable hash of a frame's names, types and values (row order included)."""
    h = hashlib.sha256()
    for s in df.get_columns():
        h.update(f"{s.name}:{s.dtype}:{s.null_count()}\n".encode())
        if s.dtype == pl.String or s.null_count():
            h.update("\x1f".join(map(str, s.to_list())).encode())
        else:
            h.update(s.to_numpy().tobytes())
    return h.hexdigest()[:16]


def runs(tickers: pl.Series) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(name, start, end) of each run of equal consecutive values."""
    starts = np.flatnonzero((tickers != tickers.shift(1)).fill_null(True).to_numpy())
    ends = np.r_[starts[1:], len(tickers)].astype(np.int64)
    return tickers.gather(starts).to_list(), starts, ends


def ticker_stats(rows: pl.DataFrame) -> pl.DataFrame:
    """ticker, first_date, last_date, rows, content_hash of each ticker of `rows` (ticker +
    PRICE_COLUMNS, a ticker's rows contiguous and by date). The hash equals `content_hash` of the
    ticker's rows without the ticker column; one sha256 per ticker over array slices, ~5 us each."""
    names, starts, ends = runs(rows["ticker"])
    body = rows.select(PRICE_COLUMNS)
    if any(s.null_count() or s.dtype == pl.String for s in body.get_columns()):
        hashes = [content_hash(body.slice(int(a), int(b - a))) for a, b in zip(starts, ends)]
    else:
        heads = [f"{s.name}:{s.dtype}:0\n".encode() for s in body.get_columns()]
        arrays = [s.to_numpy() for s in body.get_columns()]
        hashes = []
        for a, b in zip(starts, ends):
            h = hashlib.sha256()
            for head, arr in zip(heads, arrays):
                h.update(head)
                h.update(arr[a:b].tobytes())
            hashes.append(h.hexdigest()[:16])
    dates = rows["date"]
    return pl.DataFrame(dict(ticker=names, first_date=dates.gather(starts), last_date=dates.gather(ends - 1),
                             rows=ends - starts, content_hash=hashes))


def is_segment(file: str) -> bool:
    return file.startswith(SEGMENT_PREFIX)


def _bucket_of_file(files: pl.Expr) -> pl.Expr:
    return files.str.slice(len(SEGMENT_PREFIX), 2).cast(pl.Int64)


def read(store: Path, manifest: pl.DataFrame) -> pl.DataFrame:
    """ticker + PRICE_COLUMNS of the manifest's tickers, in its order, each ticker's rows by date."""
    df = scan(store, manifest).collect()
    return in_order(df, manifest["ticker"].to_list()) if df.height else df


def scan(store: Path, manifest: pl.DataFrame) -> pl.LazyFrame:
    """The same rows, lazily (each ticker contiguous and by date, tickers in no set order). Each
    segment holds the live rows of the tickers the manifest places in it, and maybe dead versions of
    others: a filter on the (sorted) ticker column, pushed down to the row groups, then for few rows
    one scan of all segments and a semi-join on (file, ticker) (one plan, not one per file), for many
    a scan per segment keeping its own tickers (no join over millions of rows). An old-layout file
    holds one ticker. Collected once, the files are read in parallel."""
    seg = manifest.filter(pl.col("file").str.starts_with(SEGMENT_PREFIX))
    parts = [_old_file(store, f, t).lazy() for t, f in manifest.filter(~pl.col("file").str.starts_with(SEGMENT_PREFIX))
             .select("ticker", "file").iter_rows()]
    if seg.height and seg["rows"].sum() <= FEW_ROWS:
        root = os.path.join(str(store), "")
        live = seg.select(_file=pl.lit(root) + pl.col("file"), ticker="ticker").lazy()
        lf = pl.scan_parquet([root + f for f in seg["file"].unique(maintain_order=True)], include_file_paths="_file")
        lf = lf.filter(pl.col("ticker").is_in(seg["ticker"].implode())).join(live, on=["_file", "ticker"], how="semi")
        parts.append(lf.select(list(ROW_SCHEMA)).cast(ROW_SCHEMA))
    else:
        for (file,), group in seg.group_by("file", maintain_order=True):
            lf = pl.scan_parquet(store / file).filter(pl.col("ticker").is_in(group["ticker"].implode()))
            parts.append(lf.select(list(ROW_SCHEMA)).cast(ROW_SCHEMA))
    return pl.concat(parts) if parts else pl.LazyFrame(schema=ROW_SCHEMA)


def _old_file(store: Path, file: str, ticker: str) -> pl.DataFrame:
    """An old-layout file: one ticker, no ticker column, read whole through one open."""
    with open(store / file, "rb") as f:
        df = pl.read_parquet(f)
    return df.select(pl.lit(ticker, pl.String).alias("ticker"), *PRICE_COLUMNS).cast(ROW_SCHEMA)


def _read_file(store: Path, file: str, tickers: list[str]) -> pl.DataFrame:
    """The rows of `tickers` from one file (a segment, or an old-layout file of one ticker)."""
    if not is_segment(file):
        return _old_file(store, file, tickers[0])
    return pl.scan_parquet(store / file).filter(pl.col("ticker").is_in(tickers)).select(
        list(ROW_SCHEMA)).cast(ROW_SCHEMA).collect()


def in_order(df: pl.DataFrame, order: list[str]) -> pl.DataFrame:
    """`df` (each ticker's rows one contiguous run) with its tickers in `order`; no copy when they are."""
    names, starts, ends = runs(df["ticker"])
    rank = {t: i for i, t in enumerate(order)}
    pos = np.array([rank[t] for t in names], dtype=np.int64)
    if len(pos) < 2 or (np.diff(pos) > 0).all():
        return df
    perm = np.argsort(pos, kind="stable")
    lengths = (ends - starts)[perm]
    offset = np.repeat(starts[perm] - (np.cumsum(lengths) - lengths), lengths)
    return df[offset + np.arange(lengths.sum())]  # (rows,) gather: run by run in the new order


def plan(store: Path, rows: pl.DataFrame, stats: pl.DataFrame, old: pl.DataFrame | None
         ) -> tuple[list[tuple[str, pl.DataFrame]], pl.DataFrame]:
    """The segments that store `rows` (ticker + PRICE_COLUMNS, each ticker contiguous and by date;
    `stats` = ticker_stats(rows)), compacting older segments of the same buckets (module doc).
    Returns ([(relative path, frame)], ticker -> file for every ticker placed in a new segment)."""
    new = stats.select("ticker", "content_hash", n="rows",
                       bucket=pl.Series([bucket_of(t) for t in stats["ticker"]], dtype=pl.Int64))
    taken = _absorbed(store, new, old)
    absorbed = taken.partition_by("bucket", as_dict=True)
    by_bucket = rows.with_columns(_bucket=pl.Series(np.repeat(new["bucket"].to_numpy(), new["n"].to_numpy())))
    frames = by_bucket.partition_by("_bucket", as_dict=True, include_key=False)
    out, tickers, files = [], [], []
    for (b,), mine in new.partition_by("bucket", as_dict=True, maintain_order=True).items():
        pairs = list(zip(mine["ticker"], mine["content_hash"]))
        frame = frames[(b,)]
        if (b,) in absorbed:
            extra = absorbed[(b,)]
            parts = [frame, *[_read_file(store, f, g["ticker"].to_list()) for (f,), g in extra.group_by("file")]]
            pairs = sorted([*pairs, *zip(extra["ticker"], extra["content_hash"])])
            frame = in_order(pl.concat(parts), [t for t, _ in pairs])  # sorted by ticker, then date
        elif not mine["ticker"].is_sorted():  # its runs are in `mine`'s order: sorted means in order
            pairs = sorted(pairs)
            frame = in_order(frame, [t for t, _ in pairs])
        digest = hashlib.sha256("\n".join(f"{t} {h}" for t, h in pairs).encode()).hexdigest()[:16]
        rel = f"{SEGMENT_PREFIX}{b:02d}/{digest}-{frame.height}.parquet"
        out.append((rel, frame))
        tickers += [t for t, _ in pairs]
        files += [rel] * len(pairs)
    return out, pl.DataFrame(dict(ticker=tickers, file=files), schema=dict(ticker=pl.String, file=pl.String))


def _absorbed(store: Path, new: pl.DataFrame, old: pl.DataFrame | None) -> pl.DataFrame:
    """ticker, content_hash, file, bucket of the live tickers of older segments the new ones take in."""
    none = pl.DataFrame(schema=dict(ticker=pl.String, content_hash=pl.String, file=pl.String, bucket=pl.Int64))
    if old is None:
        return none
    rewritten = pl.col("ticker").is_in(new["ticker"].implode())
    live = (old.filter(pl.col("file").str.starts_with(SEGMENT_PREFIX) & ~rewritten)
            .with_columns(bucket=_bucket_of_file(pl.col("file")))
            .filter(pl.col("bucket").is_in(new["bucket"].unique().implode())))
    per = live.group_by("bucket", "file").agg(live=pl.col("rows").sum()).sort("bucket", "live", "file")
    gathered = dict(new.group_by("bucket").agg(pl.col("n").sum()).iter_rows())
    take = []
    for b, file, n_live in per.iter_rows():
        if n_live <= gathered[b] or 2 * n_live < _file_rows(store / file):
            take.append(file)
            gathered[b] += n_live
    return live.filter(pl.col("file").is_in(take)).select(none.columns) if take else none


def _file_rows(path: Path) -> int:
    """A segment's rows (live and dead): from its name, else (an older name) from its footer."""
    head, dash, rows = path.stem.rpartition("-")
    if dash and rows.isdigit():
        return int(rows)
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows  # the footer only: 0.2 ms, a polars plan 1 ms
