"""A vendor drop: the files under a folder, and the tables in it that are not prices.

`discover` walks the folder (symbolic links followed once: a link back into a folder already read is
not followed again) and says, for everything it does not read, why: hidden, not a data extension, a
folder named like a data file, a broken link or a link loop, a folder it may not list.

Each data file's header says what it holds (`formats.table_kind`): prices go to the price store;
news tables (`published_at, ticker, headline`) to `news.ingest_news`; wide (`date, A, B`) or long
(`series, date, value`) tables of series to `exogenous.ingest_exogenous`, with the publication lags
of `exogenous.lag_days`, and for series that key does not name, those of a `lag_days.json` file
(`{"CPI": 45}`) in the table's folder. A side table found in the drop that cannot be read is a
rejected file; one named by `exogenous.path=` or `news.path=` is an error.
"""
from __future__ import annotations

import errno
import json
import os
from operator import attrgetter
from pathlib import Path

import polars as pl

from data_pipelines import drop_find
from data_pipelines.formats import EXTENSIONS
from data_pipelines.rawtext import unexpected
from data_pipelines.store import StoreError

NOT_DATA = "hidden, or not .csv/.txt/.tsv/.parquet"
LAG_FILE = "lag_days.json"


def is_data_name(name: str) -> bool:
    return name.lower().removesuffix(".gz").endswith(EXTENSIONS) and not name.startswith(".")


def discover(path: str | Path) -> tuple[list[Path], dict[str, str], dict[str, str]]:
    """(data files in sorted order, {path: why skipped}, {path: why rejected}) under `path`."""
    files, skipped, rejected = listing(path)
    return [Path(p) for p in files["path"]], skipped, rejected


LISTING = dict(path=pl.String, real=pl.String, size=pl.Int64, mtime_ns=pl.Int64)


def listing(path: str | Path) -> tuple[pl.DataFrame, dict[str, str], dict[str, str]]:
    """`discover` with each file's stat: (path as found, real (resolved) path, size, mtime_ns of every
    data file, in Path order; {path: why skipped}; {path: why rejected}). One lstat per file: by one
    `find` process where it can (drop_find.py), else by `walk`, one realpath per folder."""
    root = Path(path)
    if not root.exists():
        what = "is a broken symbolic link or a link loop" if root.is_symlink() else "does not exist"
        raise StoreError(f"path {root} {what}")
    if not root.is_dir():
        if not root.is_file():
            raise StoreError(f"path {root} is not a file or a folder")
        st = root.stat()
        return pl.DataFrame([(str(root), os.path.realpath(root), st.st_size, st.st_mtime_ns)], schema=LISTING,
                            orient="row"), {}, {}
    fast = drop_find.listing(root, LISTING, NOT_DATA)
    return fast[:3] if fast is not None else walk(root)


def folder_listing(path: str | Path, since_ns: int | None = None, dirs: dict | None = None, also=None
                   ) -> tuple[pl.DataFrame, dict[str, str], dict[str, str], dict | None]:
    """`listing` of the folder `path` and its folders (below it: device:inode), which a later call
    gives as `dirs` with `since_ns` for a changed-only listing (drop_find.py): the files changed
    since then, those below folders new since, and those `also()` names (paths below it, read every
    time) that still exist. Where `find` cannot answer, the walk lists everything (folders None)."""
    fast = drop_find.listing(Path(path), LISTING, NOT_DATA, since_ns, dirs, also)
    return fast if fast is not None else (*walk(Path(path)), None)


def walk(root: Path) -> tuple[pl.DataFrame, dict[str, str], dict[str, str]]:
    """`listing` of a folder by a Python walk: the reference, and the path for every tree
    drop_find does not take (links, special files, folders it may not list)."""
    cols, skipped, rejected = ([], [], [], []), {}, {}
    _list_folder(root, {root.resolve()}, cols, skipped, rejected)
    files = pl.DataFrame(dict(zip(LISTING, cols)), schema=LISTING)
    return files, dict(sorted(skipped.items())), dict(sorted(rejected.items()))


def _list_folder(here: Path, seen: set, cols: tuple, skipped: dict, rejected: dict) -> None:
    """Append the data files under `here` to `cols` in Path order: its entries by name, files and
    folders alike, each folder's files where its name falls (a depth-first walk; no global sort).
    As os.walk, the folders of one level are all marked seen before any is read. The loop is the
    cost of a hundred thousand files: one is_dir (no syscall: the entry's type), one lstat."""
    try:
        with os.scandir(here) as it:
            entries = sorted(it, key=attrgetter("name"))
    except OSError as e:
        rejected[str(e.filename)] = f"cannot list this folder ({e.strerror})"
        return
    prefix = os.path.join(os.path.realpath(here), "")
    dirs = [e for e in entries if _is_dir(e)]
    folders = {e.name for e in dirs if _accepted(e, seen, skipped)}  # marked before descending
    dirs = {e.name for e in dirs}
    paths, reals, sizes, mtimes = cols
    for entry in entries:
        name = entry.name
        if name in dirs:
            if name in folders:
                _list_folder(Path(entry.path), seen, cols, skipped, rejected)
            continue
        if not is_data_name(name):
            skipped[entry.path] = NOT_DATA
            continue
        try:
            plain = entry.is_file(follow_symlinks=False) and not entry.is_symlink()
            st = entry.stat(follow_symlinks=False) if plain else None
        except OSError as e:
            rejected[entry.path] = f"cannot read ({e.strerror})"
            continue
        row = (entry.path, prefix + name, st.st_size, st.st_mtime_ns) if plain else _entry_row(entry)
        if isinstance(row, str):
            (skipped if row == NOT_DATA else rejected)[entry.path] = row
            continue
        paths.append(row[0])
        reals.append(row[1])
        sizes.append(row[2])
        mtimes.append(row[3])


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # a link to a folder counts: links are followed (once)
    except OSError:
        return False


def _accepted(entry: os.DirEntry, seen: set, skipped: dict) -> bool:
    """Whether to read a folder: not hidden, not one read already (through a link); notes why not."""
    real = Path(entry.path).resolve()
    if entry.name.startswith(".") or real in seen:
        skipped[entry.path] = "hidden folder" if entry.name.startswith(".") else "a link to a folder read already"
        return False
    seen.add(real)
    if is_data_name(entry.name):
        skipped[entry.path] = "a folder named like a data file (the files in it are read)"
    return True


def _entry_row(entry: os.DirEntry) -> tuple | str:
    """(path, real path, size, mtime_ns) of a data file that is not a plain regular file (a link, a
    special file), or why it is not read: a link is resolved and checked on its own."""
    try:
        why = _file_problem(Path(entry.path))
        if why is not None:
            return why
        real = os.path.realpath(entry.path)
        st = os.stat(real)
        return entry.path, real, st.st_size, st.st_mtime_ns
    except OSError as e:
        return f"cannot read ({e.strerror})"


def _file_problem(p: Path) -> str | None:
    """Why `p` (an entry that is not a folder) is not read, or None."""
    if not is_data_name(p.name):
        return NOT_DATA
    try:
        real = p.resolve(strict=True) if p.is_symlink() else p
    except RuntimeError:
        return "a symbolic link loop"
    except OSError as e:
        return "a symbolic link loop" if e.errno == errno.ELOOP else "a broken symbolic link"
    return None if real.is_file() else "not a regular file"


def side_tables(c: dict, found: dict[str, list[str]], exchange: str, exchanges: dict[str, str]
                ) -> tuple[dict[str, int], dict[str, str], list[str]]:
    """Ingest the exogenous and news tables named in the config `c` and those `found` in the drop.
    Returns (rows stored per table, {file: why rejected}, summary lines)."""
    counts, rejected, lines = {}, {}, []
    exo = c.get("exogenous") or {}
    named = files_under(exo["path"]) if exo.get("path") else []
    dropped = _others(found.get("exogenous", []), named)
    if named or dropped:
        from data_pipelines.exogenous import ingest_exogenous

        defaults, sources = folder_lags(dropped + named)
        lines += [f"  exogenous lag_days from {f}: {lags}" for f, lags in sources.items()]
        counts["exogenous_rows"] = ingest_exogenous(named + dropped, c["store"], exo.get("lag_days") or {},
                                                    exchange, optional=dropped, rejected=rejected,
                                                    default_lags=defaults)
    news = c.get("news") or {}
    named = files_under(news["path"]) if news.get("path") else []
    dropped = _others(found.get("news", []), named)
    if named or dropped:
        from data_pipelines.news import ingest_news

        n = 0
        for f in named + dropped:
            try:
                n += ingest_news(f, c["store"], exchange, news.get("timezone"), exchanges=exchanges)
            except Exception as e:  # noqa: BLE001 - a file found in a drop is rejected, never stops the rest
                if f in named:
                    raise
                rejected[str(f)] = str(e).removeprefix(f"{f}: ") if isinstance(e, StoreError) else unexpected(e)
        counts["news_rows"] = n
    return counts, rejected, lines


def _others(found: list[str], named: list[Path]) -> list[Path]:
    """The files found in the drop that the explicit option does not name already."""
    known = {p.resolve() for p in named}
    return [Path(f) for f in found if Path(f).resolve() not in known]


def folder_lags(files: list[Path]) -> tuple[dict[str, int], dict[str, dict]]:
    """Publication lags from the `lag_days.json` next to any of `files`: (merged, {file: its lags})."""
    merged, sources = {}, {}
    for folder in sorted({f.parent for f in files}):
        path = folder / LAG_FILE
        if not path.is_file():
            continue
        try:
            lags = json.loads(path.read_text())
            lags = {str(k): int(v) for k, v in lags.items()}
        except (ValueError, AttributeError, TypeError) as e:
            raise StoreError(f"{path}: not a JSON object of series -> days ({e})") from None
        merged.update(lags)
        sources[str(path)] = lags
    return merged, sources


def files_under(path: str | Path) -> list[Path]:
    """A file, or the visible files under a folder (but its lag_days.json), sorted."""
    p = Path(path)
    if not p.exists():
        raise StoreError(f"path {p} does not exist")
    if not p.is_dir():
        return [p]
    return sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".") and f.name != LAG_FILE)
