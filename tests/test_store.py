"""The store: safe ticker paths, stable hashes, and crash atomicity under SIGKILL."""
import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from data_pipelines import store as st


def prices(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    return pl.DataFrame(dict(date=pl.date_range(dt.date(2020, 1, 1), dt.date(2020, 1, 1) + dt.timedelta(n - 1),
                                                eager=True), open=c, high=c * 1.01, low=c * 0.99, close=c,
                             volume=rng.uniform(1, 2, n)))


@pytest.mark.parametrize("ticker", ["../x", "/etc", "a/../../b", "..", "x\x00y", "%2F", "ticker=.."])
def test_ticker_dir_never_leaves_prices(tmp_path, ticker):
    base = (tmp_path / "prices").resolve()
    target = (base / st.ticker_dir(ticker) / "f.parquet").resolve()
    assert base in target.parents and target.parent.parent == base
    assert "\x00" not in str(target)


def test_roundtrip_and_hash_is_stable(tmp_path):
    a, b = prices(30, 0), prices(30, 1)
    m = st.write_prices(tmp_path, {"A": a, "B": b})
    assert st.content_hash(a) == st.content_hash(a.clone()) != st.content_hash(b)
    assert st.read_prices(tmp_path, ["B"]).drop("ticker").equals(b)
    assert m["rows"].to_list() == [30, 30] and (tmp_path / m["file"][0]).exists()


def test_untouched_tables_are_not_rewritten(tmp_path):
    st.write_prices(tmp_path, {"A": prices(5, 0)})
    before = (tmp_path / st.MANIFEST).stat().st_mtime_ns
    st.write_prices(tmp_path, {"A": prices(5, 0)})
    assert (tmp_path / st.MANIFEST).stat().st_mtime_ns == before


def consistent(store: Path) -> dict[str, str]:
    """Assert the store reads and every manifest row matches its file; return ticker -> hash."""
    m = st.read_manifest(store)
    for row in m.iter_rows(named=True):
        df = pl.read_parquet(store / row["file"])
        if "ticker" in df.columns:  # a segment (data_pipelines/segments.py): many tickers in one file
            df = df.filter(pl.col("ticker") == row["ticker"]).drop("ticker")
        assert df.height == row["rows"] and st.content_hash(df) == row["content_hash"]
        assert (df["date"].min(), df["date"].max()) == (row["first_date"], row["last_date"])
    st.read_prices(store)
    return dict(zip(m["ticker"], m["content_hash"]))


CHILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np, polars as pl
    sys.path.insert(0, {tests!r})
    from test_store import prices
    from data_pipelines import store as st
    mode, n = sys.argv[1], int(sys.argv[2])
    calls = [0]
    real_write, real_replace = st.write_atomic, os.replace
    def write(df, path, **kw):
        calls[0] += 1
        if mode == "write" and calls[0] == n:
            df.write_parquet(path.with_name("." + path.name + ".partial.tmp"))  # half-done temp file
            os.kill(os.getpid(), signal.SIGKILL)
        real_write(df, path, **kw)
    def replace(src, dst):
        if mode == "manifest" and str(dst).endswith(st.MANIFEST):
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)
    def unlink(path, missing_ok=False):
        os.kill(os.getpid(), signal.SIGKILL)
    st.write_atomic, os.replace = write, replace
    if mode == "cleanup":
        st.Path.unlink = unlink
    print("start", flush=True)
    st.write_prices({store!r}, {{f"T{{i:02d}}": prices(400, 100 + i) for i in range(40)}})
""")


@pytest.mark.parametrize("mode, n", [("write", 20), ("manifest", 0), ("cleanup", 0)])
def test_sigkill_mid_write_leaves_a_consistent_store(tmp_path, mode, n):
    store = tmp_path / "store"
    st.write_prices(store, {f"T{i:02d}": prices(400, i) for i in range(40)})
    old = consistent(store)
    script = CHILD.format(tests=str(Path(__file__).parent), store=str(store))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent.parent), *sys.path]))
    proc = subprocess.Popen([sys.executable, "-c", script, mode, str(n)], stdout=subprocess.PIPE, env=env)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    after = consistent(store)
    new = {f"T{i:02d}": st.content_hash(prices(400, 100 + i)) for i in range(40)}
    assert after in (old, new)
    # the next successful write cleans up temporaries and orphans
    st.write_prices(store, {"T00": prices(400, 7)})
    consistent(store)
    leftovers = [p for p in store.rglob("*") if p.name.endswith(".tmp")]
    files = {p.relative_to(store).as_posix() for p in (store / "prices").rglob("*.parquet")}
    assert not leftovers and files == set(st.read_manifest(store)["file"])


def test_sigkill_of_the_ingest_command_mid_write(tmp_path):
    src, store = tmp_path / "csv", tmp_path / "store"
    src.mkdir()
    for i in range(120):
        df = prices(150, i).with_columns(pl.col("date").cast(pl.String))
        df = df.filter(pl.col("date").str.to_date().dt.weekday() <= 5)
        df.rename(str.capitalize).write_csv(src / f"T{i:03d}.csv")
    st.write_prices(store, {"T000": prices(3, 0)})
    old = consistent(store)
    proc = subprocess.Popen([sys.executable, "-m", "forecast", "ingest", f"path={src}", f"store={store}",
                             "exchange=XNYS"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=Path(__file__).parent.parent)
    while proc.poll() is None and len(list((store / "prices").glob("*/*.parquet"))) < 30:  # files of either layout
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL  # killed, not finished
    after = consistent(store)
    assert after == old or len(after) == 120  # the previous version, or the whole new one


def vendor_csv(path: Path, seed: int) -> None:
    days = [d for d in (dt.date(2021, 1, 4) + dt.timedelta(i) for i in range(60)) if d.weekday() < 5]
    c = 100 * np.exp(np.cumsum(np.random.default_rng(seed).normal(0, 0.01, len(days))))
    pl.DataFrame(dict(Date=[d.isoformat() for d in days], Open=c, High=c + 1, Low=c - 1, Close=c,
                      Volume=np.full(len(days), 1e6))).write_csv(path)


def test_a_direct_ingest_call_holds_the_writer_lock_from_its_first_read(tmp_path):
    """`ingest()` called from Python (not the CLI) waits for another writer before it lists the drop:
    a file added to the drop while it waits is ingested (a listing taken before the wait would miss it)."""
    drop, store, err = tmp_path / "drop", tmp_path / "store", tmp_path / "err.txt"
    drop.mkdir()
    vendor_csv(drop / "AAA.csv", 0)
    code = "import sys; from data_pipelines.ingest import ingest; ingest(sys.argv[1], sys.argv[2])"
    with st.writing(store), open(err, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", code, str(drop), str(store)], stderr=log,
                                cwd=Path(__file__).resolve().parent.parent)
        end = time.monotonic() + 60
        while "waiting" not in err.read_text():
            assert proc.poll() is None and time.monotonic() < end, err.read_text()
            time.sleep(0.05)
        vendor_csv(drop / "BBB.csv", 1)  # arrives while the ingest waits for the lock
    assert proc.wait(timeout=120) == 0, err.read_text()
    assert sorted(st.read_manifest(store)["ticker"]) == ["AAA", "BBB"]
