"""The Parquet store: the contract between `data_pipelines` (writer) and `forecast` (reader).

Layout of a store directory:

    manifest.parquet                   one row per ticker: ticker, exchange, first_date, last_date,
                                       rows, content_hash, file (relative path of its price file)
    prices/ticker=<quoted>/<hash>.parquet
                                       date, open, high, low, close, volume; sorted, one row per session
    exogenous.parquet                  series, date (the session on which the value became known), value

Writes are atomic: data files are content-addressed (a new version gets a new name), the manifest
is replaced in one `os.replace`, and only then are unreferenced files removed. A reader that goes
through the manifest always sees one consistent version, whatever happened to the writer.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import quote

import polars as pl

PRICE_COLUMNS = ["date", "open", "high", "low", "close", "volume"]
MANIFEST = "manifest.parquet"
EXOGENOUS = "exogenous.parquet"
MAX_TICKER_LEN = 64


class StoreError(Exception):
    """A store that is missing, malformed, or lacks what was asked of it."""


def ticker_dir(ticker: str) -> str:
    """A directory name for `ticker` that can never leave `prices/` ('/', '..', NUL are quoted)."""
    if not ticker or len(ticker) > MAX_TICKER_LEN:
        raise StoreError(f"ticker {ticker!r}: must be 1-{MAX_TICKER_LEN} characters")
    return "ticker=" + quote(ticker, safe="")


def content_hash(df: pl.DataFrame) -> str:
    """A hash of a frame's columns and values (row order included), stable across library versions."""
    return hashlib.sha256(df.write_csv().encode()).hexdigest()[:16]


def write_atomic(df: pl.DataFrame, path: Path) -> None:
    """Write Parquet to a temporary name in the same directory, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    df.write_parquet(tmp, compression="zstd", statistics=True)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_manifest(store: str | Path) -> pl.DataFrame:
    store = Path(store)
    path = store / MANIFEST
    if not path.exists():
        what = "does not exist" if not store.exists() else f"has no {MANIFEST}"
        raise StoreError(f"store {store} {what}; build one with `python -m forecast ingest` "
                         "or use the bundled sample data/sample")
    return pl.read_parquet(path)


def write_prices(store: str | Path, frames: dict[str, pl.DataFrame], exchange: str = "XNYS") -> pl.DataFrame:
    """Add or replace the price history of each ticker in `frames`; returns the new manifest.

    Tickers not in `frames` keep their rows. Each frame must hold PRICE_COLUMNS with unique dates.
    """
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    old = read_manifest(store) if (store / MANIFEST).exists() else None
    rows = []
    for ticker, df in frames.items():
        df = df.select(PRICE_COLUMNS).sort("date")
        digest = content_hash(df)
        rel = f"prices/{ticker_dir(ticker)}/{digest}.parquet"
        if not (store / rel).exists():
            write_atomic(df, store / rel)
        rows.append(dict(ticker=ticker, exchange=exchange, first_date=df["date"].min(),
                         last_date=df["date"].max(), rows=df.height, content_hash=digest, file=rel))
    new = pl.DataFrame(rows, schema=_manifest_schema())
    if old is not None:
        new = pl.concat([old.filter(~pl.col("ticker").is_in(new["ticker"].to_list())), new])
    new = new.sort("ticker")
    write_atomic(new, store / MANIFEST)
    _remove_unreferenced(store, set(new["file"].to_list()))
    return new


def _manifest_schema() -> dict:
    return dict(ticker=pl.String, exchange=pl.String, first_date=pl.Date, last_date=pl.Date,
                rows=pl.Int64, content_hash=pl.String, file=pl.String)


def _remove_unreferenced(store: Path, keep: set[str]) -> None:
    for path in (store / "prices").glob("ticker=*/*.parquet"):
        if path.relative_to(store).as_posix() not in keep:
            path.unlink()


def read_prices(store: str | Path, tickers: list[str] | None = None) -> pl.DataFrame:
    """Rows of the requested tickers (all when None): ticker, date, open, high, low, close, volume."""
    manifest = read_manifest(store)
    known = manifest["ticker"].to_list()
    tickers = known if tickers is None else list(tickers)
    unknown = [t for t in tickers if t not in known]
    if unknown:
        raise StoreError(f"unknown ticker(s) {unknown} in store {store}; it has {known}")
    files = dict(zip(known, manifest["file"].to_list()))
    frames = [pl.read_parquet(Path(store) / files[t]).with_columns(ticker=pl.lit(t)) for t in tickers]
    return pl.concat(frames).select(["ticker", *PRICE_COLUMNS])


def write_exogenous(store: str | Path, df: pl.DataFrame) -> None:
    """Replace the exogenous table: series, date (session it became known), value."""
    write_atomic(df.select("series", "date", "value").sort("series", "date"), Path(store) / EXOGENOUS)


def read_exogenous(store: str | Path) -> pl.DataFrame | None:
    path = Path(store) / EXOGENOUS
    return pl.read_parquet(path) if path.exists() else None
