"""The Parquet store: the contract between `data_pipelines` (writer) and `forecast` (reader).

Layout of a store directory:

    manifest.parquet                   one row per ticker: ticker, exchange, first_date, last_date,
                                       rows, missing_sessions, content_hash, file (relative path)
    prices/ticker=<quoted>/<hash>.parquet
                                       date, open, high, low, close, volume; sorted, one row per session
    exogenous.parquet                  series, date (the session on which the value became known), value
    news.parquet                       ticker (null = market-wide), session (first session in which the
                                       item could be acted on), published_at (UTC), headline
    quarantine.parquet                 file, line, reason, raw: every input row that was not stored

Price files use LZ4 (writing thousands of small files, zstd costs twice the time for 25% less disk);
the other tables use zstd. Writes are atomic: price files are content-addressed (a new version gets a new name), every table is
written to a temporary name and renamed over the old one (`os.replace`), and the manifest is replaced
last, then unreferenced price files are removed. A reader that goes through the manifest always sees
one consistent version, whatever happened to the writer. A table whose content did not change is not
rewritten, so re-ingesting the same data changes no file. One writer at a time: a write removes
temporary files it finds, including another writer's.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import polars as pl

PRICE_COLUMNS = ["date", "open", "high", "low", "close", "volume"]
MANIFEST = "manifest.parquet"
EXOGENOUS = "exogenous.parquet"
NEWS = "news.parquet"
QUARANTINE = "quarantine.parquet"
MAX_TICKER_LEN = 64

MANIFEST_SCHEMA = dict(ticker=pl.String, exchange=pl.String, first_date=pl.Date, last_date=pl.Date,
                       rows=pl.Int64, missing_sessions=pl.Int64, content_hash=pl.String, file=pl.String)
QUARANTINE_SCHEMA = dict(file=pl.String, line=pl.Int64, reason=pl.String, raw=pl.String)
NEWS_SCHEMA = dict(ticker=pl.String, session=pl.Date, published_at=pl.Datetime("us", "UTC"),
                   headline=pl.String)
EXOGENOUS_SCHEMA = dict(series=pl.String, date=pl.Date, value=pl.Float64)


class StoreError(Exception):
    """A store or an input that is missing, malformed, or lacks what was asked of it."""


def ticker_dir(ticker: str) -> str:
    """A directory name for `ticker` that can never leave `prices/` ('/', '..', NUL are quoted)."""
    if not ticker or len(ticker) > MAX_TICKER_LEN:
        raise StoreError(f"ticker {ticker!r}: must be 1-{MAX_TICKER_LEN} characters")
    return "ticker=" + quote(ticker, safe="")


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


def write_atomic(df: pl.DataFrame, path: Path, compression: str = "zstd") -> None:
    """Write Parquet to a temporary name in the same directory, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    df.write_parquet(tmp, compression=compression, statistics=True)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_table(store: Path, name: str, df: pl.DataFrame) -> bool:
    """Replace table `name` atomically unless it already holds exactly `df`; True if written."""
    path = store / name
    if path.exists() and pl.read_parquet(path).equals(df):
        return False
    write_atomic(df, path)
    return True


def _read_table(store: str | Path, name: str, schema: dict) -> pl.DataFrame:
    path = Path(store) / name
    return pl.read_parquet(path) if path.exists() else pl.DataFrame(schema=schema)


def read_manifest(store: str | Path) -> pl.DataFrame:
    store = Path(store)
    path = store / MANIFEST
    if not path.exists():
        what = "does not exist" if not store.exists() else f"has no {MANIFEST}"
        raise StoreError(f"store {store} {what}; build one with `python -m forecast ingest` "
                         "or use the bundled sample data/sample")
    return pl.read_parquet(path)


def write_prices(store: str | Path, frames: dict[str, pl.DataFrame], exchange: str | dict = "XNYS",
                 missing: dict[str, int] | None = None) -> pl.DataFrame:
    """Add or replace the price history of each ticker in `frames`; returns the new manifest.

    Tickers not in `frames` keep their rows. Each frame must hold PRICE_COLUMNS with unique dates.
    `exchange` is one code or a ticker -> code mapping; `missing` counts missing sessions per ticker.
    """
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    old = read_manifest(store) if (store / MANIFEST).exists() else None
    jobs, rows = [], []
    for ticker, df in frames.items():
        df = df if df.columns == PRICE_COLUMNS else df.select(PRICE_COLUMNS)  # eager calls cost ~1 ms each
        df = df if df["date"].is_sorted() else df.sort("date")
        digest = content_hash(df)
        rel = f"prices/{ticker_dir(ticker)}/{digest}.parquet"
        if not (store / rel).exists():
            jobs.append((df, store / rel))
        code = exchange.get(ticker, "XNYS") if isinstance(exchange, dict) else exchange
        rows.append(dict(ticker=ticker, exchange=code, first_date=df["date"].min(),
                         last_date=df["date"].max(), rows=df.height,
                         missing_sessions=(missing or {}).get(ticker, 0), content_hash=digest, file=rel))
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        list(pool.map(lambda job: write_atomic(*job, compression="lz4"), jobs))  # 2x faster than zstd
    new = pl.DataFrame(rows, schema=MANIFEST_SCHEMA)
    if old is not None:
        old = old.with_columns(pl.lit(0).alias("missing_sessions")) if "missing_sessions" not in old.columns else old
        old = old.select(list(MANIFEST_SCHEMA)).cast(MANIFEST_SCHEMA)
        new = pl.concat([old.filter(~pl.col("ticker").is_in(new["ticker"].implode())), new])
    new = new.sort("ticker")
    _write_table(store, MANIFEST, new)
    _remove_unreferenced(store, set(new["file"].to_list()))
    return new


def _remove_unreferenced(store: Path, keep: set[str]) -> None:
    """Delete price files the manifest does not name, and temporaries left by a killed writer."""
    for path in (store / "prices").glob("ticker=*/*"):
        rel = path.relative_to(store).as_posix()
        if rel not in keep and (path.suffix == ".parquet" or path.name.endswith(".tmp")):
            path.unlink(missing_ok=True)
    for path in store.glob(".*.tmp"):
        path.unlink(missing_ok=True)


def read_prices(store: str | Path, tickers: list[str] | None = None) -> pl.DataFrame:
    """Rows of the requested tickers (all when None): ticker, date, open, high, low, close, volume."""
    manifest = read_manifest(store)
    known = manifest["ticker"].to_list()
    tickers = known if tickers is None else list(tickers)
    unknown = [t for t in tickers if t not in known]
    if unknown:
        listing = known if len(known) <= 20 else [*known[:20], f"... {len(known) - 20} more"]
        raise StoreError(f"unknown ticker(s) {unknown[:20]} in store {store}; it has {listing}")
    files = dict(zip(known, manifest["file"].to_list()))
    frames = [pl.read_parquet(Path(store) / files[t]).with_columns(ticker=pl.lit(t)) for t in tickers]
    return pl.concat(frames).select(["ticker", *PRICE_COLUMNS])


def write_exogenous(store: str | Path, df: pl.DataFrame) -> bool:
    """Replace the exogenous table: series, date (session it became known), value."""
    df = df.select(list(EXOGENOUS_SCHEMA)).cast(EXOGENOUS_SCHEMA).sort("series", "date")
    return _write_table(Path(store), EXOGENOUS, df)


def read_exogenous(store: str | Path) -> pl.DataFrame | None:
    path = Path(store) / EXOGENOUS
    return pl.read_parquet(path) if path.exists() else None


def write_news(store: str | Path, df: pl.DataFrame) -> bool:
    """Replace the news table: ticker (null = market-wide), session, published_at (UTC), headline."""
    df = df.select(list(NEWS_SCHEMA)).cast(NEWS_SCHEMA).sort("session", "published_at", "ticker",
                                                             "headline", nulls_last=True)
    return _write_table(Path(store), NEWS, df)


def read_news(store: str | Path) -> pl.DataFrame:
    return _read_table(store, NEWS, NEWS_SCHEMA)


def write_quarantine(store: str | Path, df: pl.DataFrame) -> bool:
    """Replace the quarantine table: file, line, reason, raw."""
    df = df.select(list(QUARANTINE_SCHEMA)).cast(QUARANTINE_SCHEMA).sort("file", "line", "reason",
                                                                         nulls_last=True)
    return _write_table(Path(store), QUARANTINE, df)


def update_quarantine(store: str | Path, files: list[str], rows: pl.DataFrame) -> bool:
    """Replace the quarantined rows of `files` by `rows` (file, line, reason, raw)."""
    old = read_quarantine(store)
    if old.height == 0 and rows.height == 0:
        return False
    kept = old.filter(~pl.col("file").is_in(files))
    return write_quarantine(store, pl.concat([kept, rows.select(list(QUARANTINE_SCHEMA)).cast(QUARANTINE_SCHEMA)]))


def read_quarantine(store: str | Path) -> pl.DataFrame:
    return _read_table(store, QUARANTINE, QUARANTINE_SCHEMA)
