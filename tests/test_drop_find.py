"""The `find` listing (drop_find.py) equals the Python walk (drop.walk) wherever it answers, and
answers None (so the walk lists) wherever the tree holds what only the walk handles."""
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_pipelines import drop, drop_find

pytestmark = pytest.mark.skipif(drop_find.listing(Path(__file__).parent, drop.LISTING, drop.NOT_DATA) is None,
                                reason="no GNU find with -printf here: the walk lists every tree")

NAMES = ["A.csv", "b.CSV", "c.txt.gz", "d.parquet", "e.pq", "f.tsv", "notes.md", ".hidden.csv", "x y.csv",
         "tab\there.csv", "new\nline.csv", "é.csv", "Z.csv", "a-b.csv", "a.b.csv", "README"]


def fast(root: Path):
    found = drop_find.listing(root, drop.LISTING, drop.NOT_DATA)
    return None if found is None else found[:3]


def same(root: Path) -> None:
    got, want = fast(root), drop.walk(root)
    assert got is not None
    assert got[0].equals(want[0]), (got[0], want[0])
    assert got[1] == want[1] and got[2] == want[2] == {}


def test_a_mixed_tree_lists_alike(tmp_path):
    d = tmp_path / "drop"
    for sub in ["", "y/2020", "y/2021", "a", ".cache", "X.csv", "a b", "a/.git/objects"]:
        (d / sub).mkdir(parents=True, exist_ok=True)
        for name in NAMES:
            (d / sub / name).write_text("Date,Close\n2024-01-02,1\n")
    os.utime(d / "A.csv", ns=(1, 1_700_000_000_123_456_789))
    same(d)
    files, skipped, _ = fast(d)
    assert files.filter(files["path"] == str(d / "A.csv"))["mtime_ns"].item() == 1_700_000_000_123_456_789
    assert skipped[str(d / ".cache")] == "hidden folder" and not any(".git" in p for p in files["path"])
    assert skipped[str(d / "X.csv")].startswith("a folder named like a data file")
    assert str(d / "X.csv" / "A.csv") in files["path"].to_list()


def test_the_csv_parse_and_the_split_parse_of_records_agree(tmp_path):
    """Without a tab in any name the records go through polars' reader; one tab sends them all
    through the per-record split: both list the same tree as the walk."""
    d = tmp_path / "drop"
    for sub in ["", "q\"uote", "n\nl"]:
        (d / sub).mkdir(parents=True, exist_ok=True)
        for name in [n for n in NAMES if "\t" not in n] + ['"q".csv', "c,d.csv", "\r.csv"]:
            (d / sub / name).write_text("Date,Close\n2024-01-02,1\n")
    data = drop_find._run([["find", ".", "-mindepth", "1", *drop_find.EXPRESSION]], d)
    assert data.count(b"\t") == 4 * data.count(b"\0")  # the csv path
    same(d)
    (d / "t\tab.csv").write_text("Date,Close\n2024-01-02,1\n")
    same(d)


def test_relative_and_dot_roots_give_the_paths_the_walk_gives(tmp_path, monkeypatch):
    (tmp_path / "drop" / "s").mkdir(parents=True)
    (tmp_path / "drop" / "s" / "A.csv").write_text("x\n")
    monkeypatch.chdir(tmp_path)
    for root in [Path("drop"), Path("drop/"), Path("."), Path("./drop/s")]:
        same(root)


@pytest.mark.parametrize("odd", ["link_file", "link_dir", "fifo"])
def test_links_and_special_files_are_left_to_the_walk(tmp_path, odd):
    d = tmp_path / "drop"
    (d / "s").mkdir(parents=True)
    (d / "s" / "A.csv").write_text("x\n")
    {"link_file": lambda: os.symlink("s/A.csv", d / "L.csv"),
     "link_dir": lambda: os.symlink("s", d / "t"),
     "fifo": lambda: os.mkfifo(d / "F.csv")}[odd]()
    assert fast(d) is None
    assert drop.listing(d)[0].equals(drop.walk(d)[0])


def test_names_find_could_read_as_expressions_list_alike(tmp_path, monkeypatch):
    for sub in ["-name", "-name/(", "-name/!", "-o"]:
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "A.csv").write_text("x\n")
    monkeypatch.chdir(tmp_path)
    same(Path("-name"))
    same(Path("."))
    assert fast(Path("-name"))[0]["path"].to_list() == ["-name/!/A.csv", "-name/(/A.csv", "-name/A.csv"]


def test_one_folder_or_many_below_the_root_list_alike(tmp_path):
    for n in [0, 1, 2, 5]:
        d = tmp_path / f"d{n}"
        d.mkdir()
        (d / "top.csv").write_text("x\n")
        for i in range(n):
            (d / f"f{i}" / "g").mkdir(parents=True)
            (d / f"f{i}" / "A.csv").write_text("x\n")
            (d / f"f{i}" / "g" / "B.csv").write_text("x\n")
        same(d)
        assert fast(d)[0].height == 1 + 2 * n


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.lists(st.sampled_from(["a", "B", ".h", "x.csv", "a b", "é"]), max_size=3),
                          st.sampled_from(NAMES)), min_size=1, max_size=30))
def test_random_trees_list_alike(entries):
    d = Path(tempfile.mkdtemp())
    try:
        for folders, name in entries:
            parent = d.joinpath(*folders)
            if any(p.is_file() for p in [parent, *parent.parents] if p != d and d in p.parents):
                continue  # a file already holds this folder's name
            parent.mkdir(parents=True, exist_ok=True)
            if not (parent / name).is_dir():
                (parent / name).write_text(name)
        same(d)
    finally:
        shutil.rmtree(d)
