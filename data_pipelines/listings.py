"""The folders a store's catalogue has listed, and when: where a changed-only listing starts.

Kept in the catalogue's own file (the key-value metadata FIELD of sources.parquet), so it is
published with it, atomically, and only with it:

    {folder (resolved): {"listed_ns": this machine's clock when its listing began,
                         "options": the fingerprint its files were read under (catalogue.py),
                         "folders": {folder below it: "device:inode"}}}

An incremental ingest of a folder listed before under the same options lists only what changed
since RACY_NS before `listed_ns` (drop_find.py): files by their ctime, which every write,
truncation, `touch`, `utime`, link or rename into the tree moves to the present and nothing can set
back, and every file below a folder that is new at its path (created, renamed or moved in, with
whatever old files it holds). A file that changed after that listing began has a later ctime; one
that changed before it, that listing saw. Files the catalogue has under the folder and the listing
does not name keep their rows (as before, a file removed from the drop keeps its rows). Rejected
files, news and exogenous tables are read every time, so they are stat'ed by name (`also`).

This needs the drop's filesystem clock within RACY_NS (2 s) of this machine's, as on a local disk
or an NTP-synchronised file server, and a filesystem that moves ctime on every change, as Linux's
local filesystems do; some FUSE, SMB and object-store mounts do not. There give `listing=full`: every
file is stat'ed and compared with the catalogue, as the first ingest of a folder always is.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl

FIELD = "forecast.listings"
MODES = ("changed", "full")


def read(store: Path) -> dict:
    """The listings recorded with the store's catalogue ({} for none, or a catalogue without them)."""
    path = Path(store) / "sources.parquet"
    if not path.exists():
        return {}
    return json.loads(pl.read_parquet_metadata(path).get(FIELD, "{}"))


def previous(recorded: dict, path: str | Path, options: str, racy_ns: int) -> tuple[int, dict] | None:
    """(since_ns, folders) for a changed-only listing of folder `path`, or None where it needs a full
    one (never listed, listed under other options, or not a folder)."""
    entry = recorded.get(os.path.realpath(path))
    if entry is None or entry["options"] != options or not Path(path).is_dir():
        return None
    return entry["listed_ns"] - racy_ns, entry["folders"]


def _below(catalogue: pl.DataFrame, path: str | Path) -> tuple[str, pl.Expr]:
    top = os.path.join(os.path.realpath(path), "")
    return top, pl.col("path").str.starts_with(top)


def read_every_time(catalogue: pl.DataFrame | None, path: str | Path, always: tuple) -> list[str]:
    """Paths below folder `path` of the catalogue's files read whatever their stat says: rejected
    ones, and those of the `always` kinds."""
    if catalogue is None:
        return []
    top, below = _below(catalogue, path)
    rows = catalogue.filter(below & (pl.col("problem").is_not_null() | pl.col("kind").is_in(always)))
    return [p[len(top):] for p in rows["path"].to_list()]


def not_listed(catalogue: pl.DataFrame | None, path: str | Path, listed: pl.DataFrame) -> int:
    """Catalogue files below folder `path` a changed-only `listed` did not name (unchanged, or gone)."""
    if catalogue is None:
        return 0
    _, below = _below(catalogue, path)
    return catalogue.filter(below & ~pl.col("path").is_in(listed["real"].implode())).height


def updated(recorded: dict, listing: tuple[str, dict] | None) -> tuple[dict, bool]:
    """(the listings with `listing` = (folder, entry) recorded, whether that changes more than the
    time): an unchanged catalogue is not rewritten to move `listed_ns` on (an earlier start only
    means a longer changed-only listing)."""
    if listing is None:
        return recorded, False
    folder, entry = listing
    before = recorded.get(folder, {})
    moved = any(before.get(k) != entry[k] for k in entry if k != "listed_ns")
    return {**recorded, folder: entry}, moved
