"""The source catalogue: which vendor files a store was built from (`<store>/sources.parquet`).

One row per file ever ingested into the store: path (resolved), size, mtime_ns, digest (blake2b of
its bytes on disk), kind (prices, news, exogenous), problem (why it was rejected, if it was) and
options (a fingerprint of the ingest options that change what a file yields). With
`incremental=true` an ingest stats every file of the drop and reads only the new and changed ones
(after a first listing of a folder, only the files whose ctime moved are even parsed from the
listing: listings.py):

- size and mtime as recorded: unchanged, not opened (100,000 files are listed and stat'ed in about 0.2 s, drop_find.py);
- otherwise the file is hashed: the recorded digest means the same bytes (a re-download, a `touch`);
- "racy" files, modified less than RACY_NS before the catalogue was last written, are always hashed:
  a change within one timestamp tick keeps size and mtime (git's index has the same rule);
- news and exogenous tables are always read (their tables are rebuilt whole), and so are rejected
  files (so each run names them again), and every file when the options' fingerprint differs.

Unchanged files keep their stored rows and their quarantined rows. A file that disappears from the
drop keeps its rows too (merge never deletes); `incremental=false` reads every file again. The
catalogue is published after the prices (built and written beside them, renamed last), so an ingest
killed before it reads the same files again.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import Future
from pathlib import Path

import polars as pl

from data_pipelines import listings
from data_pipelines.rawtext import digest, raw_bytes

TABLE = "sources.parquet"
SCHEMA = dict(path=pl.String, size=pl.Int64, mtime_ns=pl.Int64, digest=pl.String, kind=pl.String,
              problem=pl.String, options=pl.String)
RACY_NS = 2_000_000_000
ALWAYS_READ = ("news", "exogenous")
PREREAD_BYTES = 256 << 20  # changed files hashed by `unchanged` whose bytes are kept for the reader
STAGED = ".staged"  # the suffix of a catalogue written but not yet published (store_gc removes a dead ingest's)
OPTION_KEYS = ("exchange", "exchanges", "ticker_pattern", "upper_tickers", "date_format", "max_price", "max_volume")


def fingerprint(opts) -> str:
    """A hash of the options that change which rows a file yields or how they are checked."""
    values = {k: getattr(opts, k) for k in OPTION_KEYS}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read(store: Path) -> pl.DataFrame | None:
    path = Path(store) / TABLE
    return pl.read_parquet(path) if path.exists() else None


def unchanged(store: Path, listed: pl.DataFrame, options: str, old: pl.DataFrame | None
              ) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, bytes]]:
    """(the rows of `listed` (drop.listing: path, real, size, mtime_ns) to read, the catalogue rows of
    the unchanged files with their current stat, {path: bytes} of the files to read that were hashed
    here, so they are read once: up to PREREAD_BYTES of them); `old` is the store's catalogue (`read`)."""
    if old is None:
        return listed, pl.DataFrame(schema=SCHEMA), {}
    written = (Path(store) / TABLE).stat().st_mtime_ns
    df = listed.join(old.rename({"path": "real"}), on="real", how="left", suffix="_old", maintain_order="left")
    known = ((pl.col("options") == options) & ~pl.col("kind").is_in(ALWAYS_READ) & pl.col("problem").is_null()
             & (pl.col("size") >= 0))
    same_stat = (pl.col("size") == pl.col("size_old")) & (pl.col("mtime_ns") == pl.col("mtime_ns_old")) \
        & (pl.col("mtime_ns") < written - RACY_NS)
    df = df.with_columns(known=known.fill_null(False), same=same_stat.fill_null(False))
    hashed, preread, room = [], {}, PREREAD_BYTES
    for path, real, want in df.filter(pl.col("known") & ~pl.col("same")).select("path", "real", "digest").iter_rows():
        raw = _bytes_or_none(Path(real))
        if raw is not None and digest(raw) == want:
            hashed.append(real)
        elif raw is not None and len(raw) <= room:
            preread[str(Path(path))], room = raw, room - len(raw)
    keep = (pl.col("known") & pl.col("same")) | pl.col("real").is_in(hashed)
    kept = df.filter(keep).select(path="real", size="size", mtime_ns="mtime_ns", digest="digest", kind="kind",
                                  problem="problem", options="options")
    return df.filter(~keep).select(listed.columns), kept, preread


def _bytes_or_none(path: Path) -> bytes | None:
    try:
        return raw_bytes(path)
    except Exception:  # noqa: BLE001 - unreadable now: read it, and let the reader say why
        return None


def _digest_or_none(path: Path) -> str | None:
    raw = _bytes_or_none(path)
    return None if raw is None else digest(raw)


def stage(store: Path, sources: list, listed: pl.DataFrame, kept: pl.DataFrame, options: str,
          old: pl.DataFrame | None, listing: tuple[str, dict] | None = None, recorded: dict | None = None
          ) -> Path | None:
    """The new catalogue written beside the table (`.sources.parquet.<pid>.staged`, fsync'ed), for
    `publish` to rename once the prices are stored; None when it equals `old`. It holds the rows of
    the files read (`sources`, in read_sources' order, and `listed`, their drop.listing rows) and
    `kept` (unchanged files, their stat refreshed) in place of theirs in `old`, the catalogue as
    `read` under the writer lock the caller holds throughout (ingest holds it from its first read to
    its last write), and in its metadata the `recorded` listings with `listing` (folder, entry:
    listings.py) added. ingest runs this beside the price write, in a thread."""
    read_rows = listed.select(path="real", size="size", mtime_ns="mtime_ns").with_columns(
        digest=pl.Series([s.digest or _digest_or_none(s.path) for s in sources], dtype=pl.String),
        kind=pl.Series([s.kind for s in sources], dtype=pl.String),
        problem=pl.Series([s.problem for s in sources], dtype=pl.String), options=pl.lit(options))
    new = pl.concat([read_rows.select(list(SCHEMA)).cast(SCHEMA), kept.select(list(SCHEMA)).cast(SCHEMA)])
    if old is not None:
        new = pl.concat([old.cast(SCHEMA).join(new, on="path", how="anti"), new])
    if new["path"].n_unique() < new.height:  # one file listed by two paths (a followed link)
        new = new.unique("path", keep="last")
    new = new.sort("path")
    recorded, moved = listings.updated(recorded or {}, listing)
    if old is not None and not moved and (old if old["path"].is_sorted() else old.sort("path")).equals(new):
        return None
    path = Path(store) / f".{TABLE}.{os.getpid()}{STAGED}"
    new.write_parquet(path, compression="zstd", compression_level=1, statistics=True,  # level 1: half the time
                      metadata={listings.FIELD: json.dumps(recorded, sort_keys=True)})
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return path


def publish(store: Path, staged: Path | None) -> bool:
    """Rename the `stage`d catalogue over the table (last: a killed ingest reads these files again)."""
    if staged is None:
        return False
    os.replace(staged, Path(store) / TABLE)
    return True


def discard(staged: Future) -> None:
    """Remove what `stage` wrote if it was not published (an ingest that failed after staging)."""
    try:
        path = staged.result()
    except Exception:  # noqa: BLE001 - the ingest reports its own error
        return
    if path is not None:
        path.unlink(missing_ok=True)
