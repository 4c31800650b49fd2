"""Ingest end to end: formats, the malformed corpus, accounting, idempotence, hostile names, exit codes."""
import datetime as dt
import json
from pathlib import Path

import polars as pl
import pytest
from omegaconf import OmegaConf

from data_pipelines import ingest as ing
from data_pipelines.store import StoreError, read_manifest, read_prices, read_quarantine

YAHOO = "Date,Open,High,Low,Close,Adj Close,Volume\n"
ROWS = ["2024-01-02,10,11,9,10.5,10.5,1000", "2024-01-03,10,11,9,10.5,10.5,1000"]

# name -> bytes: the malformed-file corpus of the issue (plus two valid controls)
CORPUS = {
    "GOOD.csv": (YAHOO + "\n".join(ROWS) + "\n").encode(),
    "EMPTY.csv": b"",
    "HEADERONLY.csv": YAHOO.encode(),
    "UNKNOWN.csv": b"foo,bar,baz\n1,2,3\n4,5,6\n",
    "WRONGDELIM.csv": (YAHOO + ROWS[0].replace(",", ";") + "\n").encode(),
    "MIXEDDATES.csv": (YAHOO + ROWS[0] + "\n01/03/2024,10,11,9,10.5,10.5,1000\n").encode(),
    "BOM.csv": b"\xef\xbb\xbf" + (YAHOO + ROWS[0] + "\n").encode(),
    "LATIN1.csv": (YAHOO + ROWS[0] + "\n").encode() + b"2024-01-03,10,11,9,10\xe9,10.5,1000\n",
    "REPEATED.csv": (YAHOO + ROWS[0] + "\n" + YAHOO + ROWS[1] + "\n").encode(),
    "HOSTILE.csv": ("Date,Open,High,Low,Close,Volume,Ticker\n"
                    + "".join(f"2024-01-02,1,2,0.5,1.5,10,{t}\n"
                              for t in ["../../evil", "a/b", "..", "x\x00y", "/abs"])).encode(),
    "HUGE.csv": (YAHOO + ROWS[0] + "\n2024-01-03,1e308,1e308,1e308,1e308,1e308,99999999999999999999999999\n").encode(),
    "semicolon.csv": (YAHOO.replace(",", ";") + ROWS[0].replace(",", ";") + "\n").encode(),
}
EXPECTED = {  # file -> reasons of its quarantined rows (file-level problems checked separately)
    "UNKNOWN.csv": ["unknown columns", "unknown columns"],
    "WRONGDELIM.csv": ["wrong number of fields (expected 7)"],
    "MIXEDDATES.csv": ["unparsable date (expected %Y-%m-%d)"],
    "LATIN1.csv": ["non-UTF-8 bytes"],
    "REPEATED.csv": ["repeated header"],
    "HOSTILE.csv": ["invalid ticker", "invalid ticker"],
    "HUGE.csv": ["huge value"],
}


@pytest.fixture
def corpus(tmp_path) -> Path:
    d = tmp_path / "corpus"
    d.mkdir()
    for name, data in CORPUS.items():
        (d / name).write_bytes(data)
    return d


def test_malformed_corpus_reasons_name_file_and_line(corpus, tmp_path, capsys):
    store = tmp_path / "store"
    rep = ing.ingest(corpus, store)
    assert rep.rows_read == rep.rows_stored + rep.rows_quarantined + rep.duplicates
    q = read_quarantine(store)
    got = {Path(f).name: r for (f,), r in ((k, g["reason"].to_list()) for k, g in q.group_by("file"))}
    assert got == EXPECTED
    assert q.filter(pl.col("line").is_null()).height == 0
    assert {Path(f).name: p.split(":")[0] for f, p in rep.rejected_files.items()} == {
        "EMPTY.csv": "empty file", "HEADERONLY.csv": "header only, no data rows", "UNKNOWN.csv": "unknown columns"}
    tickers = read_manifest(store)["ticker"].to_list()
    assert {"GOOD", "BOM", "SEMICOLON", "MIXEDDATES", "LATIN1", "REPEATED", "HUGE", "../../EVIL", "A/B",
            "/ABS"} == set(tickers)


def test_hostile_tickers_never_write_outside_the_store(corpus, tmp_path):
    store = tmp_path / "deep" / "store"
    before = set(tmp_path.rglob("*"))
    ing.ingest(corpus / "HOSTILE.csv", store)
    created = set(tmp_path.rglob("*")) - before
    assert created and all(store in p.parents or p == store or p in store.parents for p in created)
    frames = read_prices(store)
    assert set(frames["ticker"]) == {"../../EVIL", "A/B", "/ABS"}


def test_summary_line_and_exit_codes(corpus, tmp_path, capsys):
    cfg = OmegaConf.create(dict(path=str(corpus), store=str(tmp_path / "s"), report=str(tmp_path / "r.json")))
    assert ing.run(cfg) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["rows_read"] == report["rows_stored"] + report["rows_quarantined"] + report["duplicates"]
    out = capsys.readouterr().out.splitlines()
    head = dict(kv.split("=") for kv in out[0].split())
    assert list(head)[:5] == ["files", "rows_read", "rows_stored", "rows_quarantined", "duplicates"]
    n = {k: int(v) for k, v in head.items()}
    assert n["rows_read"] == n["rows_stored"] + n["rows_quarantined"] + n["duplicates"]
    assert any("unknown columns" in line and "UNKNOWN.csv" in line for line in out)
    bad_only = tmp_path / "bad"
    bad_only.mkdir()
    for name in ["EMPTY.csv", "UNKNOWN.csv", "WRONGDELIM.csv"]:
        (bad_only / name).write_bytes(CORPUS[name])
    assert ing.run(OmegaConf.create(dict(path=str(bad_only), store=str(tmp_path / "s2")))) == 1
    with pytest.raises(StoreError, match="does not exist"):
        ing.run(OmegaConf.create(dict(path=str(tmp_path / "nope"), store=str(tmp_path / "s3"))))


def test_reingest_changes_nothing(corpus, tmp_path):
    store = tmp_path / "store"
    first = ing.ingest(corpus, store)
    snap = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in store.rglob("*") if p.is_file()}
    second = ing.ingest(corpus, store)
    assert second.tickers_changed == 0 and first.lines()[0].split(" tickers_changed")[0] == \
        second.lines()[0].split(" tickers_changed")[0]
    assert snap == {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in store.rglob("*") if p.is_file()}


def test_formats_stooq_bulk_lowercase_parquet_and_adjustment(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "bulk.txt").write_text("<TICKER>,<PER>,<DATE>,<TIME>,<OPEN>,<HIGH>,<LOW>,<CLOSE>,<VOL>,<OPENINT>\n"
                                "AAPL.US,D,20240102,000000,10,11,9,10.5,100,0\n"
                                "MSFT.US,D,20240102,000000,20,21,19,20.5,200,0\n")
    (d / "lower.csv").write_text("date,open,high,low,close,adj_close,volume\n"
                                 "2024-01-02,10,11,9,10,5,1000\n")
    pl.DataFrame(dict(Date=[dt.date(2024, 1, 2)], Open=[1.0], High=[2.0], Low=[0.5], Close=[1.5],
                      Volume=[7])).write_parquet(d / "pq.parquet")
    rep = ing.ingest(d, tmp_path / "store")
    assert rep.rows_stored == 4 and rep.rows_quarantined == 0
    px = read_prices(tmp_path / "store").sort("ticker")
    assert px["ticker"].to_list() == ["AAPL.US", "LOWER", "MSFT.US", "PQ"]
    lower = px.filter(pl.col("ticker") == "LOWER").row(0, named=True)
    assert (lower["open"], lower["high"], lower["close"], lower["volume"]) == (5.0, 5.5, 5.0, 2000.0)


def test_merge_extends_history_and_replace_mode(tmp_path):
    a, b = tmp_path / "X.csv", tmp_path / "new" / "X.csv"
    b.parent.mkdir()
    a.write_text(YAHOO + ROWS[0] + "\n")
    b.write_text(YAHOO + "2024-01-03,10,11,9,10.7,10.7,1000\n")
    store = tmp_path / "store"
    ing.ingest(a, store)
    ing.ingest(b, store)
    assert read_prices(store)["date"].cast(str).to_list() == ["2024-01-02", "2024-01-03"]
    b.write_text(YAHOO + "2024-01-02,10,11,9,10.6,10.6,1000\n")  # a vendor correction of a stored day
    rep = ing.ingest(b, store)
    assert rep.extra["replaced_stored_rows"] == 1 and read_prices(store)["close"].to_list() == [10.6, 10.7]
    b.write_text(YAHOO + "2024-01-03,10,11,9,10.7,10.7,1000\n")
    ing.ingest(b, store, ing.Options(mode="replace"))
    assert read_prices(store)["date"].cast(str).to_list() == ["2024-01-03"]
    files = list((store / "prices").rglob("*.parquet"))
    assert len(files) == 1  # the superseded version was removed


def test_ticker_pattern_and_file_names(tmp_path):
    (tmp_path / "aapl.us.txt").write_text(YAHOO + ROWS[0] + "\n")
    ing.ingest(tmp_path / "aapl.us.txt", tmp_path / "s", ing.Options(ticker_pattern=r"^([^.]+)"))
    assert read_manifest(tmp_path / "s")["ticker"].to_list() == ["AAPL"]


def test_pipeline_equals_the_plain_pandas_reference(tmp_path):
    from data_pipelines import ingest_bench as bench
    from data_pipelines import synthetic

    synthetic.generate(tmp_path / "m", tickers=4, days=40, seed=2, dirty=0.5, extras=False, split=True,
                       strength={"price": 0.1})
    src = tmp_path / "m" / "prices"
    ours = bench.polars_ingest(src, tmp_path / "a")
    ref = bench.pandas_ingest(src, tmp_path / "b")
    assert ours == ref
    theirs = pl.concat([pl.read_parquet(p).with_columns(ticker=pl.lit(p.parent.name.split("=")[1]))
                        for p in sorted((tmp_path / "b" / "prices").rglob("*.parquet"))])
    theirs = theirs.select("ticker", pl.col("Date").cast(pl.Date).alias("date"),
                           *[pl.col(c.capitalize()).alias(c) for c in ("open", "high", "low", "close", "volume")])
    mine = read_prices(tmp_path / "a").sort("ticker", "date")
    assert mine.equals(theirs.sort("ticker", "date"))


def test_unnamed_first_column_is_the_date(tmp_path):
    (tmp_path / "GOOG.csv").write_text(",Open,High,Low,Close,Volume\n2024-01-02,1,2,0.5,1.5,10\n")
    assert ing.ingest(tmp_path / "GOOG.csv", tmp_path / "s").rows_stored == 1


def test_exogenous_folder_and_unknown_lag_key(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "vix.csv").write_text("Date,vix\n1/3/2014,13.76\n1/6/2014,13.55\n")
    (tmp_path / "m" / "cpi.csv").write_text("Date,CPI\n1/1/2014,230.1\n")
    cfg = dict(path=None, store=str(tmp_path / "s"), exogenous=dict(path=str(tmp_path / "m"), lag_days={"CPI": 45}))
    assert ing.run(OmegaConf.create(cfg)) == 0
    before = (tmp_path / "s" / "exogenous.parquet").read_bytes()
    cfg["exogenous"]["lag_days"] = {"CPII": 45}
    with pytest.raises(StoreError, match="unknown series"):
        ing.run(OmegaConf.create(cfg))
    assert (tmp_path / "s" / "exogenous.parquet").read_bytes() == before  # nothing written
