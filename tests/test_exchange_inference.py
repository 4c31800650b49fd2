"""Each ticker is checked against its own exchange: given, named (suffix, index symbol) or fitted.

The files are Yahoo-format CSVs whose dates are the real sessions of XTKS, XIDX and XNYS from
exchange-calendars (2019-2023), each with a few sessions left out, as vendor files have.
"""
import datetime as dt

import exchange_calendars as xcals
import numpy as np
import pytest
from omegaconf import OmegaConf

from data_pipelines import exchanges
from data_pipelines.calendars import sessions
from data_pipelines.ingest import Options, ingest, run
from data_pipelines.store import read_manifest, read_quarantine

START, END = dt.date(2019, 1, 1), dt.date(2023, 12, 31)
GAPS = 3  # sessions left out of every file
FILES = {"^N225": "XTKS", "^JKSE": "XIDX", "AAPL": "XNYS", "IDX1": "XTKS"}  # IDX1: a name that says nothing


def real_sessions(code: str) -> list[dt.date]:
    s = sessions(code, START)
    return s.filter((s >= START) & (s <= END)).to_list()


def yahoo_csv(path, dates: list[dt.date], seed: int) -> None:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(0.01 * rng.standard_normal(len(dates))))
    lines = [f"{d},{c:.4f},{c * 1.01:.4f},{c * 0.99:.4f},{c:.4f},{c:.4f},{1000 + i}"
             for i, (d, c) in enumerate(zip(dates, close))]
    path.write_text("Date,Open,High,Low,Close,Adj Close,Volume\n" + "\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def drop(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    for i, (name, code) in enumerate(FILES.items()):
        days = real_sessions(code)
        yahoo_csv(d / f"{name}.csv", [x for k, x in enumerate(days) if k not in (100, 400, 900)], seed=i)
    return d


@pytest.fixture(scope="module")
def stored(drop, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    return store, ingest(drop, store)


def test_every_real_session_is_stored_on_its_own_exchange(stored):
    store, rep = stored
    total = sum(len(real_sessions(code)) - GAPS for code in FILES.values())
    assert (rep.rows_read, rep.rows_stored, rep.rows_quarantined) == (total, total, 0)
    assert rep.missing_sessions == GAPS * len(FILES)
    m = read_manifest(store)
    assert dict(m.select("ticker", "exchange").iter_rows()) == FILES
    assert m["missing_sessions"].to_list() == [GAPS] * len(FILES)


def test_source_and_fit_are_recorded(stored):
    store, _ = stored
    t = {r["ticker"]: r for r in exchanges.read_table(store).iter_rows(named=True)}
    assert {k: (v["exchange"], v["exchange_source"]) for k, v in t.items()} == {
        "^N225": ("XTKS", "symbol"), "^JKSE": ("XIDX", "symbol"), "AAPL": ("XNYS", "fit"), "IDX1": ("XTKS", "fit")}
    idx1 = t["IDX1"]
    n = len(real_sessions("XTKS"))
    assert idx1["dates_in_sessions"] == 1.0 and idx1["sessions_covered"] == pytest.approx((n - GAPS) / n)
    assert idx1["runner_up"] != "XTKS" and idx1["runner_up_dates_in_sessions"] < 0.99  # a clear winner
    assert all(v["dates_in_sessions"] == 1.0 for v in t.values())


def test_checking_all_against_xnys_loses_real_sessions(drop, tmp_path):
    rep = ingest(drop, tmp_path / "s", Options(exchange="XNYS"))  # what happened before inference
    q = read_quarantine(tmp_path / "s")
    assert rep.rows_quarantined > 0 and set(q["reason"]) == {"not a session"}
    lost = {f.rsplit("/", 1)[-1] for f in q["file"]}
    assert lost == {"^N225.csv", "^JKSE.csv", "IDX1.csv"}


def test_explicit_exchange_wins_and_is_kept(drop, tmp_path):
    store = tmp_path / "s"
    ingest(drop / "^N225.csv", store, Options(exchanges={"^N225": "XNYS"}))
    ingest(drop / "^N225.csv", store)  # later ingests keep the explicit choice
    row = exchanges.read_table(store).row(0, named=True)
    assert (row["exchange"], row["exchange_source"]) == ("XNYS", "explicit") and row["dates_in_sessions"] < 1
    assert read_quarantine(store)["reason"].unique().to_list() == ["not a session"]


def test_a_weekend_row_of_a_tokyo_index_is_still_quarantined(drop, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    text = (drop / "^N225.csv").read_text() + "2023-12-30,1,1,1,1,1,1\n"  # a Saturday
    (src / "^N225.csv").write_text(text)
    rep = ingest(src, tmp_path / "s")
    assert rep.reasons == {"not a session": 1} and rep.rows_stored == len(real_sessions("XTKS")) - GAPS


def test_summary_says_which_calendar_and_how_well(drop, tmp_path, capsys):
    assert run(OmegaConf.create(dict(path=str(drop), store=str(tmp_path / "s")))) == 0
    out = capsys.readouterr().out
    assert "exchange XTKS for IDX1 (fit): 100.0% of dates are its sessions, 99.8% of its sessions" in out
    assert "exchange XIDX for ^JKSE (symbol)" in out and "next best" in out


def test_few_dates_use_the_default_and_names_need_none(tmp_path):
    yahoo_csv(tmp_path / "7203.T.csv", real_sessions("XTKS")[:5], seed=0)
    yahoo_csv(tmp_path / "FEW.csv", real_sessions("XTKS")[:5], seed=1)
    ingest(tmp_path, tmp_path / "s")
    t = dict(exchanges.read_table(tmp_path / "s").select("ticker", "exchange_source").iter_rows())
    assert t == {"7203.T": "suffix", "FEW": "default"}


def test_names_map_to_known_calendars():
    known = set(xcals.get_calendar_names())
    assert set(exchanges.SUFFIXES.values()) | set(exchanges.SYMBOLS.values()) | set(exchanges.CANDIDATES) <= known
    cases = {"7203.T": "XTKS", "bp.l": "XLON", "BBCA.JK": "XIDX", "SAP.DE": "XETR", "0700.HK": "XHKG",
             "RY.TO": "XTSE", "BHP.AX": "XASX", "NESN.SW": "XSWX", "005930.KS": "XKRX", "600519.SS": "XSHG",
             "RELIANCE.NS": "XBOM", "PETR4.SA": "BVMF", "AAPL.US": "XNYS", "^GSPC": "XNYS", "^FTSE": "XLON",
             "^GDAXI": "XETR", "^HSI": "XHKG", "^FCHI": "XPAR", "^STOXX50E": "XEUR", "^KS11": "XKRX"}
    assert {t: exchanges.from_name(t)[0] for t in cases} == cases
    assert exchanges.from_name("BRK.B") is None and exchanges.from_name("IDX1") is None


@pytest.mark.parametrize("ticker", ["^N225", "^JKSE", "AAPL"])
def test_each_ticker_trains_without_split_dates(stored, ticker, tmp_path):
    """The default split is by quantile of the ticker's own sessions: no dates needed for any market."""
    from hydra import compose, initialize_config_dir

    from conftest import CONF, TINY
    from forecast.training.train import train

    store, _ = stored
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[f"data.store={store}", f"data.tickers=['{ticker}']", *TINY,  # '^': quoted
                                          f"logger.tracking_uri=sqlite:///{tmp_path}/m.db",
                                          f"trainer.default_root_dir={tmp_path}/ckpt"])
    assert cfg.data.val_start is None and cfg.data.test_start is None
    assert np.isfinite(train(cfg))
