"""The store under concurrent use: readers never fail and see one version; one writer at a time."""
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from omegaconf import OmegaConf

from data_pipelines import ingest as ing
from data_pipelines import store as st
from data_pipelines.store_lock import WRITER

ROOT = Path(__file__).resolve().parent.parent
TICKERS, DAYS = 40, 300
OFFSET = 1000.0  # version B = version A + OFFSET on every price: a read tells the versions apart
# The reader loops for 20 s; 6 s keeps the suite quick. STORE_CONCURRENCY_SECONDS=20 for the full run.
READ_SECONDS = float(os.environ.get("STORE_CONCURRENCY_SECONDS", "6"))
SUMMARY = re.compile(r"files=\d+ rows_read=(\d+) rows_stored=(\d+) rows_quarantined=(\d+) duplicates=(\d+)")


def write_version(folder: Path, offset: float, tickers: int = TICKERS) -> Path:
    """One CSV per ticker on weekdays (holidays are quarantined: fine, both versions lose the same days)."""
    folder.mkdir(parents=True)
    days = [d for d in (dt.date(2021, 1, 4) + dt.timedelta(i) for i in range(DAYS * 7 // 5)) if d.weekday() < 5]
    for i in range(tickers):
        c = 100 * np.exp(np.cumsum(np.random.default_rng(i).normal(0, 0.01, len(days)))) + offset
        pl.DataFrame(dict(Date=[d.isoformat() for d in days], Open=c, High=c + 1, Low=c - 1, Close=c,
                          Volume=np.full(len(days), 1e6))).write_csv(folder / f"S{i:04d}.csv")
    return folder


@pytest.fixture(scope="module")
def versions(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("versions")
    return write_version(base / "a", 0.0), write_version(base / "b", OFFSET)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "forecast", "ingest", *args]


def ingest_cfg(path: Path, store: Path, **kw):
    return OmegaConf.create(dict(path=str(path), store=str(store), mode="replace", **kw))


def consistent(store: Path, hashes: bool = True) -> pl.DataFrame:
    """Assert every manifest entry's file exists and reads back as described; return the manifest.
    (The bundled sample's hashes predate the current hash function: `hashes=False` for it.)"""
    m = st.read_manifest(store)
    for row in m.iter_rows(named=True):
        df = pl.read_parquet(store / row["file"])
        if "ticker" in df.columns:  # a segment (data_pipelines/segments.py): many tickers in one file
            df = df.filter(pl.col("ticker") == row["ticker"]).drop("ticker")
        assert df.height == row["rows"] and (not hashes or st.content_hash(df) == row["content_hash"]), row
    return m


def accounting(stdout: str) -> None:
    """The summary line is there and rows_read = rows_stored + rows_quarantined + duplicates."""
    read, stored, quarantined, duplicates = map(int, SUMMARY.search(stdout).groups())
    assert read == stored + quarantined + duplicates > 0


READER = textwrap.dedent("""
    import json, sys, time
    import polars as pl
    from data_pipelines import store as st
    store, seconds, tickers = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    out = dict(reads=0, failures=[], mixed=[], versions=[])

    def check(df):  # one version: every ticker there, all from A or all from B
        per = df.group_by("ticker").agg(b=(pl.col("close").min() > 500), n=pl.len())
        b = set(per["b"])
        if per.height != tickers or len(b) != 1 or per["n"].n_unique() != 1:
            out["mixed"].append(dict(tickers=per.height, versions=len(b), lengths=per["n"].unique().to_list()))
        out["versions"].append(int(b.pop()))

    end, kind = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        try:
            if kind == 0:                  # one call for the whole store
                check(st.read_prices(store))
            elif kind == 1:                # the issue's loop, each ticker pinned to one snapshot
                with st.snapshot(store) as snap:
                    check(pl.concat([snap.read_prices([t]) for t in snap.manifest["ticker"]]))
            else:                          # the issue's loop as written: a call per ticker (versions may differ)
                for t in st.read_manifest(store)["ticker"]:
                    st.read_prices(store, [t])
            out["reads"] += 1
        except Exception as e:
            out["failures"].append(repr(e)[:300])
        kind = (kind + 1) % 3
    print(json.dumps(out))
""")


def test_readers_never_fail_and_see_one_version_while_ingests_replace(versions, tmp_path, capsys):
    a, b = versions
    store = tmp_path / "store"
    assert ing.run(ingest_cfg(a, store)) == 0
    reader = subprocess.Popen([sys.executable, "-c", READER, str(store), str(READ_SECONDS), str(TICKERS)],
                              stdout=subprocess.PIPE, cwd=ROOT, text=True)
    writes = 0
    while reader.poll() is None:
        assert ing.run(ingest_cfg(b if writes % 2 == 0 else a, store)) == 0
        writes += 1
    out = json.loads(reader.stdout.read())
    assert out["failures"] == [] and out["mixed"] == []
    assert writes >= 4 and out["reads"] >= 10 and set(out["versions"]) == {0, 1}  # it really overlapped
    consistent(store)
    files = {p.relative_to(store).as_posix() for p in (store / "prices").rglob("*.parquet")}
    assert files == set(st.read_manifest(store)["file"])  # superseded versions were removed afterwards


def test_a_pinned_snapshot_outlives_writes_and_is_collected_after(tmp_path):
    frames = {f"T{i}": pl.DataFrame(dict(date=[dt.date(2024, 1, 2)], open=[1.0 * i], high=[2.0], low=[0.5],
                                         close=[1.5], volume=[10.0])) for i in range(3)}
    st.write_prices(tmp_path, frames)
    with st.snapshot(tmp_path) as snap:
        before = snap.read_prices()
        for k in range(3):
            st.write_prices(tmp_path, {t: df.with_columns(close=pl.lit(9.0 + k)) for t, df in frames.items()})
        assert snap.pinned and snap.read_prices().equals(before)
        assert st.read_prices(tmp_path)["close"].to_list() == [11.0] * 3
    st.write_prices(tmp_path, {"T0": frames["T0"].with_columns(close=pl.lit(11.0))})  # unchanged: collects only
    assert len(list((tmp_path / "prices").rglob("*.parquet"))) == 3
    assert [p.name for p in (tmp_path / st.GENERATIONS).iterdir()] == ["000004.parquet"]


def test_an_old_layout_store_reads_and_gains_generations_on_its_next_write(tmp_path):
    store = tmp_path / "sample"
    shutil.copytree(ROOT / "data" / "sample", store)
    assert not (store / st.GENERATIONS).exists()
    before = st.read_prices(store)
    with st.snapshot(store) as snap:
        assert not snap.pinned
    spx = before.filter(pl.col("ticker") == "SPX").drop("ticker")
    st.write_prices(store, {"SPX": spx.head(100)})
    assert [p.name for p in (store / st.GENERATIONS).iterdir()] == ["000001.parquet"]
    after = st.read_prices(store)
    assert after.filter(pl.col("ticker") != "SPX").equals(before.filter(pl.col("ticker") != "SPX"))
    assert after.filter(pl.col("ticker") == "SPX").height == 100 and len(consistent(store, hashes=False)) == 3


def test_two_ingests_started_apart_run_one_after_the_other(versions, tmp_path):
    """Whichever takes the lock first is stopped until the other says it waits: the outcome is certain."""
    data, procs, stopped = dict(a=versions[0], b=versions[1]), {}, None
    store, start, end = tmp_path / "store", time.monotonic(), time.monotonic() + 120
    try:
        while stopped is None or not said_waiting(tmp_path / f"{OTHER[stopped]}.err"):
            for name in "ab"[:1 + (time.monotonic() > start + 0.5)]:
                if name not in procs:
                    procs[name] = launch(data[name], store, tmp_path / name)
            holder = next((k for k, p in procs.items() if p.pid == holder_pid(store)), None)
            if stopped is None and holder is not None:
                procs[holder].send_signal(signal.SIGSTOP)  # a slow first ingest, whatever the machine's load
                stopped = holder
            assert all(p.poll() is None for p in procs.values()) and time.monotonic() < end
            time.sleep(0.002)
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGCONT)
    assert [p.wait(timeout=120) for p in procs.values()] == [0, 0]
    later = OTHER[stopped]  # b, unless a loaded machine delayed a by more than 0.5 s
    assert re.fullmatch(rf"store {re.escape(str(store))} is being written by pid {procs[stopped].pid} "
                        r"\(since \d\d:\d\d:\d\d\); waiting\n", (tmp_path / f"{later}.err").read_text())
    for name in procs:
        accounting((tmp_path / f"{name}.out").read_text())
    ing.ingest(data[later], tmp_path / "ref")
    assert st.read_prices(store).equals(st.read_prices(tmp_path / "ref"))
    assert st.read_manifest(store)["content_hash"].equals(st.read_manifest(tmp_path / "ref")["content_hash"])


OTHER = dict(a="b", b="a")


def said_waiting(err: Path) -> bool:
    return err.exists() and "waiting" in err.read_text()


def launch(path: Path, store: Path, log: Path) -> subprocess.Popen:
    """`python -m forecast ingest path=.. store=.. mode=replace`, stdout and stderr to log.out, log.err."""
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        return subprocess.Popen(cli(f"path={path}", f"store={store}", "mode=replace"), cwd=ROOT,
                                stdout=out, stderr=err)


def holder_pid(store: Path) -> int | None:
    """The pid the writer lock's holder wrote into .writer, if any."""
    try:
        return int((store / WRITER).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def wait_for(condition, *procs: subprocess.Popen, timeout: float = 120) -> None:
    """Poll `condition` until true; fail if one of `procs` exits first or time runs out."""
    end = time.monotonic() + timeout
    while not condition():
        assert all(p.poll() is None for p in procs), "a process exited before the condition held"
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_a_killed_writer_leaves_no_lock_and_a_consistent_store(versions, tmp_path, capsys):
    a, b = versions
    store = tmp_path / "store"
    ing.ingest(a, store)
    old = {p for p in (store / "prices").rglob("*.parquet")}
    proc = subprocess.Popen(cli(f"path={b}", f"store={store}", "mode=replace"), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: holder_pid(store) == proc.pid and len(list((store / "prices").rglob("*.parquet"))) > len(old),
             proc)
    proc.send_signal(signal.SIGKILL)  # mid-write, holding the lock
    assert proc.wait(timeout=60) == -signal.SIGKILL
    consistent(store)
    start = time.monotonic()
    assert ing.run(ingest_cfg(a, store, wait=False)) == 0  # would raise StoreError if the lock were still held
    assert time.monotonic() - start < 30 and "waiting" not in capsys.readouterr().err
    consistent(store)
    assert (st.read_prices(store)["close"] < 500).all()
    files = {p.relative_to(store).as_posix() for p in (store / "prices").rglob("*.parquet")}
    assert files == set(st.read_manifest(store)["file"]) and not list(store.rglob("*.tmp"))


def test_wait_false_exits_2_with_one_error_line(versions, tmp_path):
    a, _ = versions
    store = tmp_path / "store"
    ing.ingest(a, store)
    before = st.read_manifest(store)
    with st.writing(store):
        proc = subprocess.run(cli(f"path={a}", f"store={store}", "wait=false"), cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stdout == ""
    assert re.fullmatch(rf"error: store {re.escape(str(store))} is being written by pid {os.getpid()} "
                        r"\(since \d\d:\d\d:\d\d\); not waiting \(wait=false\)\n", proc.stderr), proc.stderr
    assert st.read_manifest(store).equals(before)


def test_writer_lock_nests_and_excludes_other_processes(tmp_path):
    with st.writing(tmp_path), st.writing(tmp_path):  # nested in one process: the same lock
        st.write_exogenous(tmp_path, pl.DataFrame(dict(series=["X"], date=[dt.date(2024, 1, 2)], value=[1.0])))
        probe = subprocess.run([sys.executable, "-c", "import sys; from data_pipelines import store as st\n"
                                "try:\n    st.writing(sys.argv[1], wait=False).__enter__()\n"
                                "except st.StoreError as e:\n    print(e)", str(tmp_path)],
                               cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert f"is being written by pid {os.getpid()}" in probe.stdout
    assert not (tmp_path / WRITER).exists()  # released: .writer is gone
    with st.writing(tmp_path, wait=False):
        pass


def test_a_write_removes_dead_writers_temporaries_only(tmp_path):
    """A live process's temporary beside the tables (forecast writes a cache there) survives a write."""
    st.write_prices(tmp_path, {"T": pl.DataFrame(dict(date=[dt.date(2024, 1, 2)], open=[1.0], high=[2.0],
                                                      low=[0.5], close=[1.5], volume=[10.0]))})
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    try:
        keep, stale = (tmp_path / f".cache.parquet.{pid}.tmp" for pid in (live.pid, dead.stdout.strip()))
        for tmp in (keep, stale):
            tmp.write_bytes(b"half written")
        st.write_prices(tmp_path, {"U": pl.read_parquet(next((tmp_path / "prices").rglob("*.parquet")))})
        assert keep.exists() and not stale.exists()
    finally:
        live.kill()


def test_forecast_loads_prices_through_the_store_api():
    """The reader guarantees cover training: forecast reads prices only through data_pipelines.store."""
    sources = {p: p.read_text() for p in (ROOT / "forecast").rglob("*.py")}
    loaders = [p for p, s in sources.items()
               if re.search(r"from data_pipelines\.store import [^\n]*\bread_prices\b", s) and "read_prices(" in s]
    assert loaders, "no module of forecast/ calls data_pipelines.store.read_prices"
    direct_read = re.compile(r"""["']prices[/"']|manifests/|read_parquet\([^)]*manifest""")
    direct = [p for p, s in sources.items() if direct_read.search(s)]
    assert direct == [], f"reads store files directly: {direct}"


def sample_drop(folder: Path, scale: float) -> Path:
    """SPX and IXIC of the bundled sample as Yahoo-style CSVs, every price times `scale`."""
    folder.mkdir(parents=True)
    for (ticker,), df in st.read_prices(ROOT / "data" / "sample", ["SPX", "IXIC"]).partition_by(
            "ticker", as_dict=True).items():
        df.select(pl.col("date").alias("Date"), *(pl.col(c.lower()).mul(scale).alias(c) for c in
                                                  ("Open", "High", "Low", "Close")),
                  pl.col("volume").alias("Volume")).write_csv(folder / f"{ticker}.csv")
    return folder


REINGEST = """
import pathlib, subprocess, sys
store, a, b, stop = sys.argv[1], sys.argv[2], sys.argv[3], pathlib.Path(sys.argv[4])
n = 0
while not stop.exists():
    subprocess.run([sys.executable, "-m", "forecast", "ingest", f"path={(a, b)[n % 2]}", f"store={store}",
                    "mode=replace"], check=True, capture_output=True)
    n += 1
    print(n, flush=True)
"""


@pytest.mark.slow
def test_train_and_predict_finish_while_ingests_replace_the_store(tmp_path_factory, tmp_path):
    from test_predict import trained_model

    from conftest import TINY

    model, store = trained_model(tmp_path_factory), tmp_path / "store"
    a, b = sample_drop(tmp_path / "a", 1.0), sample_drop(tmp_path / "b", 1.01)
    stop = tmp_path / "stop"
    subprocess.run(cli(f"path={a}", f"store={store}"), cwd=ROOT, check=True, capture_output=True)
    writer = subprocess.Popen([sys.executable, "-c", REINGEST, str(store), str(a), str(b), str(stop)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        train = subprocess.Popen([sys.executable, "-m", "forecast", "train", *TINY, f"data.store={store}",
                                  "data.tickers=[IXIC,SPX]", f"logger.tracking_uri=sqlite:///{tmp_path}/train.db",
                                  f"trainer.default_root_dir={tmp_path}/ckpt"], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        predicted = [subprocess.run([sys.executable, "-m", "forecast", "predict", f"model={model['run_id']}",
                                     f"logger.tracking_uri={model['tracking_uri']}", f"data.store={store}",
                                     f"date={day}", f"predictions.url=sqlite:///{tmp_path}/predictions.db"],
                                    cwd=ROOT, env=env, capture_output=True, text=True)
                     for day in ("2018-12-27", "2018-12-28", "2018-12-31")]
        trained = train.communicate(timeout=600)
        assert train.returncode == 0, trained[1][-2000:]
        for proc in predicted:
            assert proc.returncode == 0, proc.stderr[-2000:]
        assert writer.poll() is None, f"the writer stopped before train and predict finished: {writer.stderr.read()}"
    finally:
        stop.touch()
        try:
            replaced, failed = writer.communicate(timeout=300)
        finally:
            writer.kill()
    assert writer.returncode == 0, f"an ingest failed while train and predict read: {failed[-2000:]}"
    assert len(replaced.split()) >= 2, f"only {len(replaced.split())} replacements ran while train and predict read"
    consistent(store)
