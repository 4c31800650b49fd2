"""Data at scale: bucketed price segments (compaction), and the source catalogue's incremental ingest."""
import datetime as dt
import math
import os
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from data_pipelines import catalogue, segments, vendor_drop
from data_pipelines import ingest as ing
from data_pipelines import store as st


def frame(n: int, seed: int, start: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    c = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    days = [dt.date(2020, 1, 1) + dt.timedelta(days=start + i) for i in range(n)]
    return pl.DataFrame(dict(date=days, open=c, high=c * 1.01, low=c * 0.99, close=c, volume=rng.uniform(1, 9, n)))


def segment_files(store: Path) -> list[Path]:
    return sorted((store / "prices").glob("*/*.parquet"))


def test_many_tickers_are_a_few_files_read_back_in_the_order_asked(tmp_path):
    frames = {f"T{i:03d}": frame(20 + i % 7, i) for i in range(300)}
    m = st.write_prices(tmp_path, frames)
    dirs = {p.parent for p in segment_files(tmp_path)}
    assert len(segment_files(tmp_path)) <= segments.BUCKETS and len(dirs) <= segments.BUCKETS
    assert m["file"].str.starts_with(segments.SEGMENT_PREFIX).all() and m["file"].n_unique() == len(dirs)
    asked = ["T207", "T003", "T150"]
    got = st.read_prices(tmp_path, asked)
    assert got["ticker"].unique(maintain_order=True).to_list() == asked
    for t in asked:
        assert got.filter(pl.col("ticker") == t).drop("ticker").equals(frames[t])
    with st.snapshot(tmp_path) as snap:  # the lazy scan: the same rows, in no set ticker order
        assert snap.scan_prices(asked).collect().sort("ticker", "date").equals(got.sort("ticker", "date"))
    everything = st.read_prices(tmp_path)
    assert everything["ticker"].unique(maintain_order=True).to_list() == sorted(frames)  # manifest order
    assert m["content_hash"].to_list() == [st.content_hash(frames[t]) for t in sorted(frames)]
    backwards = tmp_path / "backwards"  # given in reverse order, each segment is still sorted
    assert st.write_prices(backwards, dict(reversed(frames.items()))).equals(m)
    for path in segment_files(backwards):
        seg = pl.read_parquet(path)
        assert seg.equals(seg.sort("ticker", "date")), path


def test_segments_stay_few_and_mostly_live_over_many_small_writes(tmp_path):
    """Size-tiered compaction: every write leaves each segment at least half live, a bucket about
    log2(writes) segments, each sorted by ticker and date, and the store equal to the reference."""
    rng = np.random.default_rng(0)
    ref = {f"K{i:03d}": frame(30, i) for i in range(120)}
    st.write_prices(tmp_path, ref)
    writes = 40
    for w in range(writes):
        changed = {t: frame(30, 1000 * w + i, start=w) for i, t in enumerate(rng.choice(sorted(ref), 6, replace=False))}
        ref.update(changed)
        m = st.write_prices(tmp_path, changed)
        live = m.group_by("file").agg(pl.col("rows").sum())
        for file, n_live in live.iter_rows():
            seg = pl.read_parquet(tmp_path / file)
            assert 2 * n_live >= seg.height, (w, file, n_live, seg.height)
            assert seg.equals(seg.sort("ticker", "date")), (w, file)  # reads rely on the order
        per_bucket = live.group_by(pl.col("file").str.slice(0, len(segments.SEGMENT_PREFIX) + 2)).len()["len"].max()
        assert per_bucket <= 2 + math.log2(w + 1)
        assert {p.relative_to(tmp_path).as_posix() for p in segment_files(tmp_path)} == set(m["file"])  # collected
    got = st.read_prices(tmp_path)
    for t, df in ref.items():
        assert got.filter(pl.col("ticker") == t).drop("ticker").equals(df)


@pytest.fixture
def drop(tmp_path) -> Path:
    vendor_drop.write(tmp_path / "drop", files=120, rows=30, years=4, dirty=0.05, seed=3)
    return tmp_path / "drop"


def tables(store: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    q = st.read_quarantine(store).drop("file").sort("line", "reason", "raw")
    return st.read_prices(store), q


def incremental(drop: Path, store: Path, **kw) -> ing.Report:
    return ing.ingest(drop, store, ing.Options(incremental=True, exchange="XNYS", **kw))


def rewrite(path: Path, row: int, close: float) -> None:
    lines = path.read_text().splitlines()
    f = lines[row].split(",")
    f[4] = f"{close:.4f}"
    if "Adj Close" in lines[0]:
        f[5] = f[4]
    lines[row] = ",".join(f)
    path.write_text("\n".join(lines) + "\n")


def test_incremental_reingest_reads_only_new_and_changed_files_and_equals_a_full_one(drop, tmp_path):
    store = tmp_path / "store"
    first = incremental(drop, store)
    assert first.files == 120 and first.rows_read == first.rows_stored + first.rows_quarantined + first.duplicates
    yahoo, stooq = drop / "yahoo" / "Y000005.csv", drop / "stooq" / "2013" / "s000002.us.txt"
    for path in (yahoo, stooq):
        f = path.read_text().splitlines()[3].split(",")
        rewrite(path, 3, (float(f[2]) + float(f[3])) / 2)
    new = drop / "stooq" / "2016" / "s000002.us.txt"  # a new year of a ticker already stored
    new.parent.mkdir()
    new.write_text(vendor_drop.STOOQ + "\n2016-01-05,10,11,9,10.5,1000,0\n2016-01-06,10,11,9,10.6,1000,0\n")
    second = incremental(drop, store)
    assert (second.files, second.extra["files_unchanged"]) == (3, 118)
    assert second.rows_read == sum(len(p.read_text().splitlines()) - 1 for p in (yahoo, stooq, new))
    assert second.tickers_changed == 2
    full = ing.ingest(drop, tmp_path / "full", ing.Options(exchange="XNYS"))
    assert full.files == 121
    (prices, quarantine), (full_prices, full_quarantine) = tables(store), tables(tmp_path / "full")
    assert prices.equals(full_prices) and quarantine.equals(full_quarantine)
    snap = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in store.rglob("*") if p.is_file()}
    third = incremental(drop, store)
    assert third.files == 0 and third.extra["files_unchanged"] == 121
    assert snap == {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in store.rglob("*") if p.is_file()}


def test_same_bytes_are_not_read_and_a_racy_change_is_seen(drop, tmp_path):
    store = tmp_path / "store"
    incremental(drop, store)  # the drop was written just now: all its files are racy for this catalogue
    target = drop / "yahoo" / "Y000001.csv"
    stat = target.stat()
    text = target.read_text()
    rewrite(target, 2, float(text.splitlines()[2].split(",")[4]) + 0.0001)  # same size, other bytes
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime: only the hash can tell
    assert target.stat().st_size == stat.st_size
    racy = incremental(drop, store)
    assert racy.files == 1 and racy.tickers_changed == 1
    os.utime(drop / "yahoo" / "Y000002.csv")  # touched: a new mtime, the same bytes
    assert incremental(drop, store).files == 0
    cat = catalogue.read(store)
    old = time.time_ns() - 10 * catalogue.RACY_NS
    for p in drop.rglob("*.*"):
        os.utime(p, ns=(old, old))  # long before the catalogue: now stat alone decides
    assert incremental(drop, store).files == 0 and catalogue.read(store)["mtime_ns"].max() <= old
    assert cat.height == 120


def test_other_options_or_replace_mode_read_every_file(drop, tmp_path):
    store = tmp_path / "store"
    incremental(drop, store)
    assert incremental(drop, store, max_price=1e6).files == 120  # the options decide what a file yields
    assert incremental(drop, store, max_price=1e6).files == 0
    assert incremental(drop, store, max_price=1e6, mode="replace").files == 120


def test_the_accounting_of_a_whole_drop_matches_what_was_written(tmp_path):
    info = vendor_drop.write(tmp_path / "d", files=200, rows=40, years=5, dirty=0.05, seed=1)
    rep = ing.ingest(tmp_path / "d", tmp_path / "s", ing.Options(exchange="auto"))
    assert {k: getattr(rep, k) for k in info["expected"]} == info["expected"]
    assert st.read_prices(tmp_path / "s").height == rep.rows_stored
    assert st.read_manifest(tmp_path / "s").height == info["tickers"]
    assert set(rep.seconds) == {"listing", "reading", "validating", "dedup", "writing"}


def test_a_failed_price_write_publishes_no_catalogue_and_leaves_no_staged_file(drop, tmp_path, monkeypatch):
    """The catalogue is staged beside the price write and renamed only after it: a failure in
    between keeps the old catalogue (so the same files are read again) and removes what was staged."""
    store = tmp_path / "store"
    incremental(drop, store)
    before = catalogue.read(store)
    rewrite(drop / "yahoo" / "Y000005.csv", 3, 1.2345)

    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ing, "_store_prices", fail)
    with pytest.raises(OSError, match="No space"):
        incremental(drop, store)
    assert catalogue.read(store).equals(before) and not list(store.glob(".*.staged"))
    monkeypatch.undo()
    assert incremental(drop, store).files == 1


def test_a_catalogue_staged_by_a_killed_ingest_is_removed_by_the_next_write(drop, tmp_path):
    import subprocess
    import sys

    store = tmp_path / "store"
    incremental(drop, store)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = store / f".{catalogue.TABLE}.{int(dead.stdout)}{catalogue.STAGED}"
    left.write_bytes(b"half a table")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = store / f".{catalogue.TABLE}.{alive.pid}{catalogue.STAGED}"  # a live process's: left alone
        live.write_bytes(b"being written")
        rewrite(drop / "yahoo" / "Y000005.csv", 3, 1.2345)
        assert incremental(drop, store).files == 1
        assert not left.exists() and live.exists()
    finally:
        alive.kill()
