"""The changed-only listing (listings.py, drop_find.py): after a folder's first ingest, a re-ingest
that parses only the files whose ctime moved, and lists whole the folders new at their path, reads
exactly the files, and stores exactly what, a re-ingest comparing every file's stat reads and stores."""
import os
import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from data_pipelines import catalogue, drop_find, listings, vendor_drop
from data_pipelines import ingest as ing
from data_pipelines import store as st

pytestmark = pytest.mark.skipif(drop_find.listing(Path(__file__).parent, {"path": pl.String, "real": pl.String,
                                                                          "size": pl.Int64, "mtime_ns": pl.Int64},
                                                  "x") is None, reason="no GNU find with -printf here")
OLD_NS = 1_600_000_000_000_000_000  # 2020: an mtime long before any catalogue


def again(drop: Path, store: Path, listing: str) -> ing.Report:
    return ing.ingest(drop, store, ing.Options(incremental=True, exchange="XNYS", listing=listing))


def state(store: Path) -> tuple:
    cat = catalogue.read(store).sort("path")
    return st.read_prices(store), st.read_quarantine(store).sort("file", "line", "reason"), cat


def rewrite(path: Path, close: str) -> None:
    lines = path.read_text().splitlines()
    f = lines[2].split(",")
    f[4] = close
    lines[2] = ",".join(f)
    path.write_text("\n".join(lines) + "\n")


ROWS = "2021-03-01,10,11,9,10.5,10.5,1000\n2021-03-02,10,11,9,10.6,10.6,1000\n"


def prepare(drop: Path, outside: Path) -> None:
    """Before the first listing, so that their ctime is older than it: files and folders outside the
    drop to move in later (an old mtime too), and a hidden folder in it, pruned, to publish later."""
    for i in range(5):
        for path in (outside / f"f{i}" / f"M{i:06d}.csv", outside / f"d{i}" / "batch" / f"B{i:06d}.csv",
                     drop / f".incoming{i}" / f"H{i:06d}.csv"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(vendor_drop.YAHOO + "\n" + ROWS)
            os.utime(path, ns=(OLD_NS, OLD_NS))


MUTATIONS = ("in_place", "same_size_old_mtime", "new_file", "file_moved_in", "folder_moved_in",
             "hidden_folder_shown", "renamed", "deleted", "rejected_fixed")


def mutate(kind: str, drop: Path, outside: Path, rng) -> None:
    files = sorted(p for p in drop.rglob("*.csv") if p.is_file() and ".incoming" not in str(p))
    pick = files[int(rng.integers(len(files)))]
    left = [int(p.name[1:]) for p in outside.glob("f*")]
    if kind == "in_place":
        rewrite(pick, "10.1234")
    elif kind == "same_size_old_mtime":  # only the bytes changed, size and (an old) mtime kept
        rewrite(pick, pick.read_text().splitlines()[2].split(",")[4][:-1] + "7")
        os.utime(pick, ns=(OLD_NS, OLD_NS))
    elif kind == "new_file":
        (drop / "yahoo" / f"N{rng.integers(1e6):06d}.csv").write_text(vendor_drop.YAHOO + "\n" + ROWS)
    elif kind == "file_moved_in" and left:  # an old file renamed in: its mtime and ctime as before until then
        shutil.move(str(next((outside / f"f{left[0]}").iterdir())), str(drop / "yahoo"))
        shutil.rmtree(outside / f"f{left[0]}")
    elif kind == "folder_moved_in" and list(outside.glob("d*")):  # its files' ctime stays old
        src = sorted(outside.glob("d*"))[0]
        shutil.move(str(src / "batch"), str(drop / f"batch{src.name}"))
        src.rmdir()
    elif kind == "hidden_folder_shown" and list(drop.glob(".incoming*")):  # published by a rename
        hidden = sorted(drop.glob(".incoming*"))[0]
        hidden.rename(drop / f"published{hidden.name[-1]}")
    elif kind == "renamed":
        pick.rename(pick.with_name("R" + pick.name))
    elif kind == "deleted":
        pick.unlink()
    elif kind == "rejected_fixed":  # a file rejected before, fixed: read every time until it is fine
        bad = drop / "yahoo" / "ZBAD.csv"
        if bad.exists():
            bad.write_text(vendor_drop.YAHOO + "\n" + ROWS)


@pytest.fixture
def drop(tmp_path) -> Path:
    vendor_drop.write(tmp_path / "drop", files=60, rows=20, years=3, dirty=0.05, seed=5)
    (tmp_path / "drop" / "yahoo" / "ZBAD.csv").write_bytes(b"\x00\x01 not a table")
    os.utime(tmp_path / "drop" / "yahoo" / "ZBAD.csv", ns=(OLD_NS, OLD_NS))
    return tmp_path / "drop"


def first_listing(drop: Path, store: Path, monkeypatch) -> None:
    """The first ingest, its listing starting in a later second than every file's ctime (find
    compares whole seconds); RACY_NS 0, so the later listing starts from exactly that second."""
    monkeypatch.setattr(catalogue, "RACY_NS", 0)
    prepare(drop, drop.parent / "outside")
    time.sleep(1.05)
    ing.ingest(drop, store, ing.Options(incremental=True, exchange="XNYS"))
    assert listings.read(store)[os.path.realpath(drop)]["folders"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_changed_listing_reads_and_stores_what_a_full_one_does(drop, tmp_path, monkeypatch, seed):
    store = tmp_path / "store"
    first_listing(drop, store, monkeypatch)
    rng = np.random.default_rng(seed)
    kinds = MUTATIONS if seed == 0 else rng.choice(MUTATIONS, 5)
    for kind in kinds:
        mutate(str(kind), drop, tmp_path / "outside", rng)
    shutil.copytree(store, tmp_path / "full")
    changed, full = again(drop, store, "changed"), again(drop, tmp_path / "full", "full")
    assert (changed.files, changed.rows_read, changed.tickers_changed) == (full.files, full.rows_read,
                                                                           full.tickers_changed)
    assert changed.extra["files_unchanged"] >= full.extra["files_unchanged"]  # a deleted file counts here
    for a, b in zip(state(store), state(tmp_path / "full")):
        assert a.equals(b)
    rejected = int(catalogue.read(store)["problem"].is_not_null().sum())
    assert again(drop, store, "changed").files == rejected  # rejected files are read every time


def test_the_changed_listing_parses_only_the_changed_records(drop, tmp_path, monkeypatch):
    """What makes it fast: a re-ingest of one changed file among many lists (and parses) only
    the folders and that file, and a folder moved in whole."""
    store = tmp_path / "store"
    first_listing(drop, store, monkeypatch)
    rewrite(drop / "yahoo" / "Y000003.csv", "10.1234")
    mutate("folder_moved_in", drop, tmp_path / "outside", np.random.default_rng(0))
    opts = catalogue.fingerprint(ing.Options(exchange="XNYS"))
    since, folders = listings.previous(listings.read(store), drop, opts, 0)
    files = drop_find.listing(drop, {"path": pl.String, "real": pl.String, "size": pl.Int64, "mtime_ns": pl.Int64},
                              "x", since, folders)[0]
    names = sorted(Path(p).name for p in files["path"])
    assert len(names) == 2 and names[0].startswith("B") and names[1] == "Y000003.csv"


def test_listing_full_and_other_options_list_everything(drop, tmp_path, monkeypatch):
    store = tmp_path / "store"
    first_listing(drop, store, monkeypatch)
    opts = catalogue.fingerprint(ing.Options(exchange="XNYS"))
    assert listings.previous(listings.read(store), drop, opts, 0) is not None
    assert listings.previous(listings.read(store), drop, catalogue.fingerprint(ing.Options(exchange="XLON")), 0) is None
    assert listings.previous(listings.read(store), drop / "yahoo", opts, 0) is None  # another folder
    before = (store / catalogue.TABLE).read_bytes()
    assert again(drop, store, "changed").files == 1 and (store / catalogue.TABLE).read_bytes() == before
    with pytest.raises(st.StoreError, match="listing: 'some' is not changed or full"):
        from omegaconf import OmegaConf
        ing.run(OmegaConf.create(dict(path=str(drop), store=str(store), listing="some", incremental=True)))
