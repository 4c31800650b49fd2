"""Exchange-calendar rules: non-sessions quarantined, missing sessions counted, overrides, old history."""
import datetime as dt

import polars as pl
import pytest

from data_pipelines import calendars
from data_pipelines.ingest import Options, ingest
from data_pipelines.store import StoreError, read_manifest, read_quarantine

HEADER = "Date,Open,High,Low,Close,Volume\n"


def write(path, dates):
    path.write_text(HEADER + "".join(f"{d},10,11,9,10.5,100\n" for d in dates))


def test_missing_sessions_counted_not_filled(tmp_path):
    write(tmp_path / "A.csv", ["2024-01-02", "2024-01-05", "2024-01-10"])  # lacks 3, 4, 8, 9
    ingest(tmp_path / "A.csv", tmp_path / "s")
    m = read_manifest(tmp_path / "s").row(0, named=True)
    assert (m["rows"], m["missing_sessions"]) == (3, 4)


def test_unsorted_input_is_sorted(tmp_path):
    write(tmp_path / "A.csv", ["2024-01-05", "2024-01-02", "2024-01-03"])
    from data_pipelines.store import read_prices
    ingest(tmp_path / "A.csv", tmp_path / "s")
    assert read_prices(tmp_path / "s")["date"].is_sorted()


def test_per_ticker_exchange_override(tmp_path):
    # 2024-01-03 is a Tokyo holiday and a New York session
    write(tmp_path / "A.csv", ["2024-01-03", "2024-01-04"])
    write(tmp_path / "T.csv", ["2024-01-03", "2024-01-04"])
    rep = ingest(tmp_path, tmp_path / "s", Options(exchanges={"T": "XTKS"}))
    q = read_quarantine(tmp_path / "s")
    assert q["file"].str.ends_with("T.csv").to_list() == [True] and rep.reasons == {"not a session": 1}
    assert dict(read_manifest(tmp_path / "s").select("ticker", "exchange").iter_rows()) == {"A": "XNYS", "T": "XTKS"}


def test_history_older_than_the_default_window_is_checked(tmp_path):
    # 1990-12-25 is a NYSE holiday, older than exchange-calendars' default 20-year window
    write(tmp_path / "A.csv", ["1990-12-24", "1990-12-25", "1990-12-26"])
    rep = ingest(tmp_path / "A.csv", tmp_path / "s")
    assert rep.reasons == {"not a session": 1} and rep.rows_stored == 2 and rep.unchecked == 0


def test_history_before_a_calendars_bound_is_accepted_on_weekdays(tmp_path):
    # XTKS cannot be evaluated before 1997-01-01: weekdays accepted (unchecked), weekends quarantined
    write(tmp_path / "T.csv", ["1996-12-27", "1996-12-28", "1997-01-06", "1997-01-07"])
    rep = ingest(tmp_path / "T.csv", tmp_path / "s", Options(exchange="XTKS"))
    assert rep.rows_stored == 3 and rep.unchecked == 1 and rep.reasons == {"not a session": 1}
    assert read_manifest(tmp_path / "s")["missing_sessions"].to_list() == [0]


def test_unknown_exchange_is_a_clear_error(tmp_path):
    write(tmp_path / "A.csv", ["2024-01-02"])
    with pytest.raises(StoreError, match="unknown exchange 'XXXX'"):
        ingest(tmp_path / "A.csv", tmp_path / "s", Options(exchange="XXXX"))


def test_coverage_counts_from_the_calendar_start():
    frames = {"A": pl.DataFrame(dict(date=[dt.date(2024, 1, 2), dt.date(2024, 1, 5)])),
              "T": pl.DataFrame(dict(date=[dt.date(1996, 12, 30), dt.date(1997, 1, 6), dt.date(1997, 1, 8)]))}
    cov = calendars.coverage(frames, {"T": "XTKS"}, "XNYS")
    assert cov.rows() == [("A", "XNYS", 2, 0), ("T", "XTKS", 1, 1)]  # T lacks 1997-01-07
