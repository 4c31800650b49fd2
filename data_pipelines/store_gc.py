"""The writer's clean-up after publishing a generation: superseded generations and price files.

A generation is unlinked only when no reader pins it (store_lock.unlink_unpinned), and a price file
(a segment, or an old-layout per-ticker file) only when no remaining generation names it, so no
file of a pinned snapshot is ever removed. Temporaries of writers that died are removed too; those
of live processes (a reader's cache beside the tables) are left alone.
"""
from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from data_pipelines import store_lock


def collect(store: Path) -> None:
    """Remove the older generations no reader pins, then the files no remaining generation names."""
    from data_pipelines.store import _generation_path, _generations, _read_root_manifest  # store calls this module

    gens = _generations(store)
    for g in gens[:-1]:
        store_lock.unlink_unpinned(_generation_path(store, g))
    keep = set(_read_root_manifest(store)["file"].unique())
    for g in _generations(store):
        keep.update(pl.read_parquet(_generation_path(store, g), columns=["file"])["file"].unique())
    _remove_unreferenced(store, keep, _generation_path(store, 0).parent)


def _remove_unreferenced(store: Path, keep: set[str], generations: Path) -> None:
    """Delete price files no generation names, and temporaries left by a killed writer."""
    for path in (store / "prices").glob("*/*"):
        rel = path.relative_to(store).as_posix()
        if rel not in keep and (path.suffix == ".parquet" or path.name.endswith(".tmp")):
            path.unlink(missing_ok=True)
    for path in [*store.glob(".*.tmp"), *generations.glob(".*.tmp")]:
        if _abandoned(path):
            path.unlink(missing_ok=True)
    for path in store.glob(".*.staged"):  # a catalogue staged by an ingest that died (catalogue.stage)
        if _abandoned(path, mine=False):
            path.unlink(missing_ok=True)


def _abandoned(tmp: Path, mine: bool = True) -> bool:
    """Whether no other live process wrote `tmp` (`.<name>.<pid>.tmp`, see write_atomic; `mine`:
    whether this process's own count as abandoned). Only the writer writes price files, but a reader
    may write a cache beside the tables (forecast does)."""
    pid = tmp.name.split(".")[-2]
    if not pid.isdigit() or int(pid) == os.getpid():
        return not pid.isdigit() or mine
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False
