"""The Parquet store: the contract between `data_pipelines` (writer) and `forecast` (reader).

Layout of a store directory:

    manifest.parquet                   one row per ticker: ticker, exchange, first_date, last_date,
                                       rows, missing_sessions, content_hash, file (relative path)
    manifests/<g>.parquet              manifest generation g = 000001, 000002, ...: the highest is current,
                                       manifest.parquet a copy of it (older stores lack these until written)
    prices/bucket=<kk>/<digest>-<rows>.parquet
                                       segments: ticker, date, open, high, low, close, volume of many
                                       tickers, sorted, one row per ticker and session (segments.py);
                                       stores written before segments hold prices/ticker=<quoted>/<hash>.parquet
                                       (one ticker, no ticker column), still read
    sources.parquet                    the vendor files ingested: path, size, mtime, hash (catalogue.py)
    exogenous.parquet                  series, date (the session on which the value became known), value
    news.parquet                       ticker (null = market-wide), session (first session in which the
                                       item could be acted on), published_at (UTC), headline
    quarantine.parquet                 file, line, reason, raw: every input row that was not stored
    .write.lock, .writer               the writer's lock; while held, .writer names its pid and start time

Price segments use LZ4 (zstd costs twice the time for 25% less disk); the other tables use zstd.
Writes are atomic: segments are content-addressed (a new version gets a new name) and never
modified, every table is written to a temporary name and renamed over the old one (`os.replace`),
and a new manifest generation is published last. A ticker whose content did not change is not
rewritten, nor is a table, so re-ingesting the same data changes no file.

One writer at a time: every write, and `python -m forecast ingest` as a whole (`writing`), holds an
exclusive `flock` on .write.lock. The kernel drops it when the holder exits or is killed, so no lock
is ever stale. A second writer waits, saying so once on stderr, or with wait=False raises StoreError.

Readers never fail while a writer writes, and never wait for it. A reader pins the generation it
reads with a shared `flock` on its manifest file until it has read every file it names (`snapshot`;
`read_prices` pins once per call). After publishing a generation, a write unlinks each older one it
can lock exclusively without waiting (a pinned one is left to a later write), then the price files no
remaining generation names. A reader that pinned a file already unlinked (it lost that race) sees so
and takes the newest generation: no file of a pinned generation is ever removed. The other tables are
single files replaced by rename; a reader opens each once and reads one whole version of it.

Network filesystems: all of this needs `flock` honoured by every machine that uses the store. Linux's
NFS client maps `flock` to NFS byte-range locks (unless mounted with local_lock=flock or all), which
hold only if the server's lock service works and lapse when a client loses its lease; SMB/CIFS, FUSE
and object-store mounts may keep locks local to each machine or ignore them. Where locks are not
shared, two machines can write at once (one may lose the other's tickers), and a writer cannot see
another machine's readers, so it may remove files they are reading (FileNotFoundError or "stale file
handle"; reading again succeeds). There, write from one machine only and read elsewhere only while
nobody writes, or keep the store on a local disk.
"""
from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import polars as pl

from data_pipelines import segments, store_gc, store_lock
from data_pipelines.segments import PRICE_COLUMNS, content_hash  # noqa: F401 - part of this module's API

MANIFEST = "manifest.parquet"
EXOGENOUS = "exogenous.parquet"
NEWS = "news.parquet"
QUARANTINE = "quarantine.parquet"
GENERATIONS = "manifests"
PIN_TRIES = 100  # a reader retries only when a write removed its generation between listing and pinning
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


def write_atomic(df: pl.DataFrame, path: Path, compression: str = "zstd", row_group_size: int | None = None) -> None:
    """Write Parquet to a temporary name in the same directory, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    df.write_parquet(tmp, compression=compression, statistics=True, row_group_size=row_group_size)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def copy_atomic(source: Path, path: Path) -> None:
    """`write_atomic` of a file's bytes: copy to a temporary name, fsync, rename over `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.copyfile(source, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_table(store: Path, name: str, df: pl.DataFrame) -> bool:
    """Replace table `name` atomically unless it already holds exactly `df`; True if written."""
    with writing(store):
        path = store / name
        if path.exists() and pl.read_parquet(path).equals(df):
            return False
        write_atomic(df, path)
        return True


def _read_file(path: Path) -> pl.DataFrame | None:
    """A Parquet file read through one open (None if missing): a rename over `path` cannot mix versions."""
    try:
        with open(path, "rb") as f:
            return pl.read_parquet(f)
    except FileNotFoundError:
        return None


def _read_table(store: str | Path, name: str, schema: dict) -> pl.DataFrame:
    df = _read_file(Path(store) / name)
    return pl.DataFrame(schema=schema) if df is None else df


def writing(store: str | Path, wait: bool = True):
    """Hold the store's writer lock for a `with` block (the store is created if missing); calls nest.

    While another process holds it: wait, after one line on stderr, or with wait=False raise StoreError.
    """
    store = Path(store)
    if store.exists() and not store.is_dir():
        raise StoreError(f"store {store} exists and is not a directory")
    store.mkdir(parents=True, exist_ok=True)
    return store_lock.exclusive(store, wait, StoreError)


class Snapshot:
    """One manifest generation of a store, pinned until `close()`: every file it names stays readable.

    `with snapshot(store) as snap:` reads any number of tickers, in any number of calls, from one version.
    """

    def __init__(self, store: Path, manifest: pl.DataFrame, pin=None) -> None:
        self.store, self.manifest, self._pin = store, manifest, pin

    @property
    def pinned(self) -> bool:
        """False for a store written before generations existed (nothing to pin; see `read_prices`)."""
        return self._pin is not None

    def read_prices(self, tickers: list[str] | None = None) -> pl.DataFrame:
        """Rows of the requested tickers (all when None; each once, in the order asked), each by date:
        ticker, date, open, high, low, close, volume."""
        return segments.read(self.store, self._entries(tickers))

    def scan_prices(self, tickers: list[str] | None = None) -> pl.LazyFrame:
        """The same rows as a polars lazy scan, collected while the snapshot is open (each ticker's
        rows contiguous and by date; the tickers in no set order)."""
        return segments.scan(self.store, self._entries(tickers))

    def _entries(self, tickers: list[str] | None) -> pl.DataFrame:
        """The manifest rows of `tickers` in that order (all when None); StoreError names unknown ones."""
        if tickers is None:
            return self.manifest
        wanted = pl.DataFrame(dict(ticker=list(dict.fromkeys(str(t) for t in tickers))), schema=dict(ticker=pl.String))
        rows = wanted.join(self.manifest, on="ticker", how="left", maintain_order="left")
        unknown = rows.filter(pl.col("file").is_null())["ticker"].to_list()
        if unknown:
            known = self.manifest["ticker"].to_list()
            listing = known if len(known) <= 20 else [*known[:20], f"... {len(known) - 20} more"]
            raise StoreError(f"unknown ticker(s) {unknown[:20]} in store {self.store}; it has {listing}")
        return rows

    def close(self) -> None:
        if self._pin is not None:
            self._pin.close()  # drops the shared flock: a later write may remove this generation
            self._pin = None

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def snapshot(store: str | Path) -> Snapshot:
    """Pin the store's newest manifest generation (a store without generations is read unpinned)."""
    store = Path(store)
    for _ in range(PIN_TRIES):
        gens = _generations(store)
        if not gens:
            return Snapshot(store, _read_root_manifest(store))
        pin = store_lock.pin(_generation_path(store, gens[-1]))
        if pin is not None:
            try:
                return Snapshot(store, pl.read_parquet(pin), pin)
            except BaseException:
                pin.close()
                raise
    raise StoreError(f"store {store}: no manifest generation could be pinned in {PIN_TRIES} tries")


def _generations(store: Path) -> list[int]:
    """The manifest generations on disk, oldest first; none in a store written before they existed."""
    try:
        names = os.listdir(store / GENERATIONS)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(n[:-8]) for n in names if n.endswith(".parquet") and n[:-8].isdigit())


def _generation_path(store: Path, generation: int) -> Path:
    return store / GENERATIONS / f"{generation:06d}.parquet"


def _read_root_manifest(store: Path) -> pl.DataFrame:
    df = _read_file(store / MANIFEST)
    if df is None:
        what = "does not exist" if not store.exists() else f"has no {MANIFEST}"
        raise StoreError(f"store {store} {what}; build one with `python -m forecast ingest` "
                         "or use the bundled sample data/sample")
    return df


def read_manifest(store: str | Path) -> pl.DataFrame:
    """The current manifest (`snapshot` keeps it pinned while the files it names are read)."""
    with snapshot(store) as snap:
        return snap.manifest


def read_prices(store: str | Path, tickers: list[str] | None = None) -> pl.DataFrame:
    """Rows of the requested tickers (all when None) from one generation: ticker, date, open, high, low,
    close, volume. An unpinned read of an old-layout store whose files the first write since has removed
    is read again, from the generation that write published."""
    with snapshot(store) as snap:
        try:
            return snap.read_prices(tickers)
        except FileNotFoundError:
            if snap.pinned:
                raise
    with snapshot(store) as snap:
        return snap.read_prices(tickers)


def write_prices(store: str | Path, frames: dict[str, pl.DataFrame] | pl.DataFrame, exchange: str | dict = "XNYS",
                 missing: dict[str, int] | None = None) -> pl.DataFrame:
    """Add or replace the price history of each ticker in `frames`; returns the new manifest.

    `frames` maps tickers to frames of PRICE_COLUMNS, or is one frame with a ticker column too (each
    ticker's rows contiguous). Tickers not in `frames` keep their rows; dates must be unique per ticker.
    `exchange` is one code or a ticker -> code mapping; `missing` counts missing sessions per ticker.
    """
    store = Path(store)
    with writing(store):
        old = _current_manifest(store)
        if old is not None:
            old = old if "missing_sessions" in old.columns else old.with_columns(missing_sessions=pl.lit(0))
            old = old.select(list(MANIFEST_SCHEMA)).cast(MANIFEST_SCHEMA)
        new = _write_price_files(store, _stacked(frames), exchange, missing, old)
        if old is None or not old.equals(new):
            gens = _generations(store)
            path = _generation_path(store, (gens[-1] if gens else 0) + 1)
            write_atomic(new, path)  # readers pin it from now
            copy_atomic(path, store / MANIFEST)  # the root copy: its bytes, not a second encoding
        else:
            _write_table(store, MANIFEST, new)
        store_gc.collect(store)
    return new


def _current_manifest(store: Path) -> pl.DataFrame | None:
    """The newest manifest as the writer sees it (it holds the lock, so nothing is removed meanwhile)."""
    gens = _generations(store)
    return _read_file(_generation_path(store, gens[-1]) if gens else store / MANIFEST)


def _stacked(frames: dict[str, pl.DataFrame] | pl.DataFrame) -> pl.DataFrame:
    """ticker + PRICE_COLUMNS, each ticker's rows one run sorted by date."""
    if isinstance(frames, dict):
        parts = [df.select(PRICE_COLUMNS).with_columns(ticker=pl.lit(t, pl.String)) for t, df in frames.items()]
        rows = pl.concat(parts) if parts else pl.DataFrame(schema=segments.ROW_SCHEMA)
    else:
        rows = frames
    rows = rows.select("ticker", *PRICE_COLUMNS)
    same = pl.col("ticker") == pl.col("ticker").shift(1)
    flags = rows.select(start=~same.fill_null(False), back=same & (pl.col("date") <= pl.col("date").shift(1)))
    if flags["start"].sum() != rows["ticker"].n_unique() or flags["back"].any():
        rows = rows.sort("ticker", "date", maintain_order=True)
    return rows


def _write_price_files(store: Path, rows: pl.DataFrame, exchange: str | dict, missing: dict[str, int] | None,
                       old: pl.DataFrame | None) -> pl.DataFrame:
    """Write the segments of the tickers whose content changed (segments.py); returns the new
    manifest: `old`'s rows with those of every ticker in `rows`, and of older tickers a compaction
    moved, replaced (assembled while the segments are written)."""
    for t in rows["ticker"].unique():
        ticker_dir(t)  # the length rule: a ticker names a store entry
    stats = segments.ticker_stats(rows)
    codes = exchange if isinstance(exchange, dict) else {}
    stats = stats.with_columns(
        exchange=pl.col("ticker").replace_strict(codes, default=exchange if isinstance(exchange, str) else "XNYS",
                                                 return_dtype=pl.String),
        missing_sessions=pl.col("ticker").replace_strict(missing or {}, default=0, return_dtype=pl.Int64))
    stored = old.select("ticker", old_hash="content_hash", old_file="file") if old is not None else None
    if stored is not None:
        stats = stats.join(stored, on="ticker", how="left", maintain_order="left")
        same = (pl.col("content_hash") == pl.col("old_hash")).fill_null(False)
        changed = stats.filter(~same)
        stats = stats.with_columns(file=pl.when(same).then(pl.col("old_file")))
    else:
        changed, stats = stats, stats.with_columns(file=pl.lit(None, pl.String))
    keep = rows.filter(pl.col("ticker").is_in(changed["ticker"].implode())) if changed.height < stats.height else rows
    jobs, placed = segments.plan(store, keep, changed.select(stats.columns[:5]), old)
    jobs = [(df, store / rel) for rel, df in jobs if not (store / rel).exists()]
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:  # the manifest rows meanwhile
        written = [pool.submit(write_atomic, *job, compression="lz4", row_group_size=segments.ROW_GROUP)
                   for job in jobs]
        moved = placed.join(stats.select("ticker"), on="ticker", how="anti")  # older tickers taken into a new segment
        new = stats.join(placed, on="ticker", how="left", suffix="_new", maintain_order="left")
        new = new.with_columns(file=pl.coalesce("file_new", "file"))
        if old is not None and moved.height:
            moved = old.join(moved, on="ticker").with_columns(file=pl.col("file_right"))
            new = pl.concat([new.select(list(MANIFEST_SCHEMA)), moved.select(list(MANIFEST_SCHEMA))])
        new = new.select(list(MANIFEST_SCHEMA)).cast(MANIFEST_SCHEMA)
        if old is not None:
            new = pl.concat([old.filter(~pl.col("ticker").is_in(new["ticker"].implode())), new])
        new = new.sort("ticker")
        for job in written:
            job.result()  # every segment durable before any manifest names it
    return new


def write_exogenous(store: str | Path, df: pl.DataFrame) -> bool:
    """Replace the exogenous table: series, date (session it became known), value."""
    df = df.select(list(EXOGENOUS_SCHEMA)).cast(EXOGENOUS_SCHEMA).sort("series", "date")
    return _write_table(Path(store), EXOGENOUS, df)


def read_exogenous(store: str | Path) -> pl.DataFrame | None:
    return _read_file(Path(store) / EXOGENOUS)


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
    with writing(store):  # read, modify, write: no other writer in between
        old = read_quarantine(store)
        if old.height == 0 and rows.height == 0:
            return False
        kept = old.filter(~pl.col("file").is_in(files))
        rows = rows.select(list(QUARANTINE_SCHEMA)).cast(QUARANTINE_SCHEMA)
        return write_quarantine(store, pl.concat([kept, rows]))


def read_quarantine(store: str | Path) -> pl.DataFrame:
    return _read_table(store, QUARANTINE, QUARANTINE_SCHEMA)
