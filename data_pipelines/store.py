"""The Parquet store: the contract between `data_pipelines` (writer) and `forecast` (reader).

Layout of a store directory:

    manifest.parquet                   one row per ticker: ticker, exchange, first_date, last_date,
                                       rows, missing_sessions, content_hash, file (relative path)
    manifests/<g>.parquet              manifest generation g = 000001, 000002, ...: the highest is current,
                                       manifest.parquet a copy of it (older stores lack these until written)
    prices/ticker=<quoted>/<hash>.parquet
                                       date, open, high, low, close, volume; sorted, one row per session
    exogenous.parquet                  series, date (the session on which the value became known), value
    news.parquet                       ticker (null = market-wide), session (first session in which the
                                       item could be acted on), published_at (UTC), headline
    quarantine.parquet                 file, line, reason, raw: every input row that was not stored
    .write.lock, .writer               the writer's lock; while held, .writer names its pid and start time

Price files use LZ4 (writing thousands of small files, zstd costs twice the time for 25% less disk);
the other tables use zstd. Writes are atomic: price files are content-addressed (a new version gets a
new name), every table is written to a temporary name and renamed over the old one (`os.replace`),
and a new manifest generation is published last. A table whose content did not change is not
rewritten, so re-ingesting the same data changes no file.

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

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import polars as pl

from data_pipelines import store_lock

PRICE_COLUMNS = ["date", "open", "high", "low", "close", "volume"]
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
        """Rows of the requested tickers (all when None): ticker, date, open, high, low, close, volume."""
        known = self.manifest["ticker"].to_list()
        tickers = known if tickers is None else list(tickers)
        files = dict(zip(known, self.manifest["file"].to_list()))
        unknown = [t for t in tickers if t not in files]
        if unknown:
            listing = known if len(known) <= 20 else [*known[:20], f"... {len(known) - 20} more"]
            raise StoreError(f"unknown ticker(s) {unknown[:20]} in store {self.store}; it has {listing}")
        frames = [pl.read_parquet(self.store / files[t]).with_columns(ticker=pl.lit(t)) for t in tickers]
        return pl.concat(frames).select(["ticker", *PRICE_COLUMNS])

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


def write_prices(store: str | Path, frames: dict[str, pl.DataFrame], exchange: str | dict = "XNYS",
                 missing: dict[str, int] | None = None) -> pl.DataFrame:
    """Add or replace the price history of each ticker in `frames`; returns the new manifest.

    Tickers not in `frames` keep their rows. Each frame must hold PRICE_COLUMNS with unique dates.
    `exchange` is one code or a ticker -> code mapping; `missing` counts missing sessions per ticker.
    """
    store = Path(store)
    with writing(store):
        old = _current_manifest(store)
        new = _write_price_files(store, frames, exchange, missing)
        if old is not None:
            kept = old if "missing_sessions" in old.columns else old.with_columns(missing_sessions=pl.lit(0))
            kept = kept.select(list(MANIFEST_SCHEMA)).cast(MANIFEST_SCHEMA)
            new = pl.concat([kept.filter(~pl.col("ticker").is_in(new["ticker"].implode())), new])
        new = new.sort("ticker")
        if old is None or not old.equals(new):
            gens = _generations(store)
            write_atomic(new, _generation_path(store, (gens[-1] if gens else 0) + 1))  # readers pin it from now
        _write_table(store, MANIFEST, new)
        _collect(store)
    return new


def _current_manifest(store: Path) -> pl.DataFrame | None:
    """The newest manifest as the writer sees it (it holds the lock, so nothing is removed meanwhile)."""
    gens = _generations(store)
    return _read_file(_generation_path(store, gens[-1]) if gens else store / MANIFEST)


def _write_price_files(store: Path, frames: dict[str, pl.DataFrame], exchange: str | dict,
                       missing: dict[str, int] | None) -> pl.DataFrame:
    """Write each frame unless a file of its content exists; returns the frames' manifest rows."""
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
    return pl.DataFrame(rows, schema=MANIFEST_SCHEMA)


def _collect(store: Path) -> None:
    """Remove the older generations no reader pins, then the files no remaining generation names."""
    gens = _generations(store)
    for g in gens[:-1]:
        store_lock.unlink_unpinned(_generation_path(store, g))
    keep = set(_read_root_manifest(store)["file"])
    for g in _generations(store):
        keep.update(pl.read_parquet(_generation_path(store, g))["file"])
    _remove_unreferenced(store, keep)


def _remove_unreferenced(store: Path, keep: set[str]) -> None:
    """Delete price files no generation names, and temporaries left by a killed writer."""
    for path in (store / "prices").glob("ticker=*/*"):
        rel = path.relative_to(store).as_posix()
        if rel not in keep and (path.suffix == ".parquet" or path.name.endswith(".tmp")):
            path.unlink(missing_ok=True)
    for path in [*store.glob(".*.tmp"), *(store / GENERATIONS).glob(".*.tmp")]:
        if _abandoned(path):
            path.unlink(missing_ok=True)


def _abandoned(tmp: Path) -> bool:
    """Whether no other live process wrote `tmp` (`.<name>.<pid>.tmp`, see write_atomic). Only the
    writer writes price files, but a reader may write a cache beside the tables (forecast does)."""
    pid = tmp.name.split(".")[-2]
    if not pid.isdigit() or int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


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
