"""The fast path of `drop.listing`: GNU `find` processes list and stat a folder's files.

A hundred thousand files cost the Python walk (`drop._list_folder`, the reference) about 0.4-0.9 s,
most of it one `DirEntry.stat` and one name check per file in the interpreter; `find -printf` does
the same walk and the same `lstat` in C, the root's folders split between two processes (about
0.2 s with the output parsed by polars). It answers
only for the common tree, plain files and folders, and returns None for anything else, which the
reference then lists itself: a symbolic link or special file anywhere (links are followed once, a
loop is named), an error from `find` (a folder it may not list), a name that is not UTF-8, a
timestamp before 1970, a `find` without -printf (BSD, busybox) or no `find` at all.
`tests/test_drop_find.py` checks that both paths give the same listing.

A changed-only listing (`since_ns`, `dirs`: drop.folder_listing) prints every visible folder with
its device and inode, and a file only if its ctime is not before `since_ns`: every write,
truncation, `touch`, `utime`, link or rename of a file moves its ctime to the present, and nothing
can set it back. A folder that is new at its path (created, renamed or moved in, with whatever old
files it holds) is not in `dirs`, the folders of the previous listing, and is listed whole. `find`
still stats every file; what shrinks is the records to parse and join: the changed ones.
"""
from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import polars as pl

from data_pipelines.formats import EXTENSIONS

FORMAT = r"%y\t%s\t%T@\t%D:%i\t%p\0"  # type, size, mtime (seconds.fraction), device:inode, ./path below the root
HIDDEN_RECORD = r"H\t0\t0\t0\t%p\0"
FIELDS = ("y", "size", "t", "id", "rel")
EXPRESSION = ["(", "-name", ".*", "-type", "d", "-printf", HIDDEN_RECORD, "-prune", ")", "-o", "-printf", FORMAT]
WORKERS = 2  # find processes for the folders below the root
HIDDEN = "hidden folder"
DATA_NAMED = "a folder named like a data file (the files in it are read)"
_DATA = r"(?i)(" + "|".join(e.replace(".", r"\.") for e in EXTENSIONS) + r")(\.gz)?$"


def listing(root: Path, columns: dict, not_data: str, since_ns: int | None = None, dirs: dict | None = None,
            also=None) -> tuple[pl.DataFrame, dict, dict, dict] | None:
    """(files: `columns` path, real, size, mtime_ns in Path order, {path: why skipped}, {}, {folder
    below the root: device:inode}) of the folder `root`, or None where the reference must list it.
    With `since_ns` and `dirs` (the folders of a previous listing), only the files changed since
    then, those below folders not in `dirs`, and those `also()` names (paths below `root`, asked
    once `find` has run) that still exist. The root's own entries are listed by one process and its
    visible folders split between WORKERS more, run at once."""
    if shutil.which("find") is None:
        return None
    try:
        with os.scandir(root) as it:
            folders = sorted(e.name for e in it if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))
    except OSError:
        return None
    changed = since_ns is not None and dirs is not None
    expression = _changed_since(since_ns) if changed else EXPRESSION
    df = _find(root, folders, expression)
    if df is not None and changed:
        df = _with_new_folders(root, df, dirs)
        df = df if df is None or also is None else pl.concat([df, _stat_records(root, also(), df["rel"])])
    if df is None or not df["y"].is_in(["f", "d", "H"]).all() or df["t"].str.starts_with("-").any():
        return None
    df = df.with_columns(pl.col("rel").str.strip_prefix("./"))
    top = str(root)
    folders_now = dict(df.filter(pl.col("y") == "d").select("rel", "id").iter_rows())
    return *_frame(df, top, os.path.realpath(top), columns, not_data), folders_now


def _find(root: Path, folders: list[str], expression: list[str], starts: list[str] | None = None
          ) -> pl.DataFrame | None:
    """The records `find` prints for `expression` below `root` (or below the folders `starts`),
    the root's entries by one process and its `folders` split between WORKERS more."""
    if starts is not None:
        calls = [["find", *starts, "-mindepth", "1", *expression]]
    else:
        groups = [g for g in (folders[i::WORKERS] for i in range(WORKERS)) if g] if len(folders) > 1 else []
        calls = [["find", ".", "-mindepth", "1", *(["-maxdepth", "1"] if groups else []), *expression]]
        calls += [["find", *(f"./{name}" for name in g), "-mindepth", "1", *expression] for g in groups]
    data = _run(calls, root)
    return None if data is None else _records(data)


def _changed_since(since_ns: int) -> list[str]:
    """EXPRESSION printing every folder but only the files whose ctime is at or after the second of
    `since_ns` (hidden folders are pruned and named, as always)."""
    newer = ["-newerct", f"@{since_ns // 1_000_000_000}"]
    return [*EXPRESSION[:10], "-type", "d", "-printf", FORMAT, "-o", *newer, "-printf", FORMAT]


def _with_new_folders(root: Path, df: pl.DataFrame, dirs: dict) -> pl.DataFrame | None:
    """`df` (a changed-only listing) with every entry below the folders that are not in `dirs` (new
    at their path, or another folder now: a new device:inode), each once."""
    rows = df.filter(pl.col("y") == "d").select("rel", "id").iter_rows()
    new = {rel.removeprefix("./") for rel, key in rows if dirs.get(rel.removeprefix("./")) != key}
    tops = sorted(rel for rel in new if not any(str(up) in new for up in Path(rel).parents))
    if not tops:
        return df
    below = _find(root, [], EXPRESSION, [f"./{rel}" for rel in tops])
    return None if below is None else pl.concat([df, below]).unique("rel", keep="first", maintain_order=True)


def _run(calls: list[list[str]], cwd: Path) -> bytes | None:
    """The records the `find` calls print, run at once in `cwd` (each into its own file, so none
    waits on a full pipe); None on any error or a name that is not UTF-8."""
    outs = [tempfile.TemporaryFile() for _ in calls]
    try:
        procs = [subprocess.Popen(c, cwd=cwd, stdout=o, stderr=subprocess.PIPE) for c, o in zip(calls, outs)]
        errors = [p.communicate()[1] for p in procs]
        if any(p.returncode for p in procs) or any(errors):
            return None
        data = b""
        for o in outs:
            o.seek(0)
            data += o.read()
        data.decode("utf-8")  # only checked: polars reads the bytes
        return data
    except (OSError, UnicodeDecodeError):
        return None
    finally:
        for o in outs:
            o.close()


def _records(data: bytes) -> pl.DataFrame:
    """FIELDS of each NUL-ended record. Parsed as tab-separated values when every record has exactly
    its four tabs (no name holds one), else split per record."""
    if not data:
        return pl.DataFrame(schema={c: pl.String for c in FIELDS})
    if data.count(b"\t") == (len(FIELDS) - 1) * data.count(b"\0"):
        return pl.read_csv(io.BytesIO(data), separator="\t", eol_char="\0", has_header=False, quote_char=None,
                           new_columns=list(FIELDS), infer_schema=False)
    records = data.decode("utf-8").split("\0")[:-1]
    return pl.DataFrame({"r": records}, schema={"r": pl.String}).select(
        pl.col("r").str.splitn("\t", len(FIELDS)).struct.rename_fields(list(FIELDS))).unnest("r")


def _stat_records(root: Path, rels, printed: pl.Series) -> pl.DataFrame:
    """Records, as `find` prints them, of the plain files `rels` (below `root`) it did not print."""
    seen, rows = set(printed.to_list()), []
    for rel in rels:
        try:
            st = os.lstat(root / rel)
        except OSError:
            continue  # gone: nothing to read
        if stat.S_ISREG(st.st_mode) and f"./{rel}" not in seen:
            seconds, ns = divmod(st.st_mtime_ns, 1_000_000_000)
            rows.append(("f", str(st.st_size), f"{seconds}.{ns:09d}", f"{st.st_dev}:{st.st_ino}", f"./{rel}"))
    return pl.DataFrame(rows, schema={c: pl.String for c in FIELDS}, orient="row")


def _frame(df: pl.DataFrame, top: str, real_top: str, columns: dict, not_data: str) -> tuple[pl.DataFrame, dict, dict]:
    """The parsed `find` records (y, size, t, rel: the path below `top`) as drop.listing's answer."""
    rel = pl.col("rel")  # hidden folders are pruned, so a "/." can only start the name
    hidden = rel.str.starts_with(".") | rel.str.contains("/.", literal=True)
    df = df.with_columns(path=pl.lit(os.path.join(top, "")) + rel,
                         data=rel.str.contains(_DATA) & ~hidden,
                         order=rel.str.replace_all("/", "\x00", literal=True))  # Path order: parts compared
    if top == ".":  # the walk names the root's entries ./a and, below them, a/b (Path drops the ./)
        df = df.with_columns(path=pl.when(pl.col("rel").str.contains("/", literal=True)).then("rel").otherwise("path"))
    why = (pl.when(pl.col("y") == "H").then(pl.lit(HIDDEN))
           .when((pl.col("y") == "d") & pl.col("data")).then(pl.lit(DATA_NAMED))
           .when((pl.col("y") == "f") & ~pl.col("data")).then(pl.lit(not_data)))
    df = df.with_columns(why=why)
    skipped = df.filter(pl.col("why").is_not_null()).sort("path")
    files = df.filter((pl.col("y") == "f") & pl.col("data")).sort("order")
    whole, frac = pl.col("t").str.split_exact(".", 1).struct[0], pl.col("t").str.split_exact(".", 1).struct[1]
    mtime = whole.cast(pl.Int64) * 1_000_000_000 + frac.fill_null("").str.slice(0, 9).str.pad_end(9, "0").cast(pl.Int64)
    files = files.select(path="path", real=pl.lit(os.path.join(real_top, "")) + pl.col("rel"),
                         size=pl.col("size").cast(pl.Int64), mtime_ns=mtime).cast(columns)
    return files, dict(zip(skipped["path"], skipped["why"])), {}

