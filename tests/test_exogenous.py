"""Exogenous series: publication lag, known-session keys, quarantine."""
import datetime as dt

import polars as pl

from data_pipelines.calendars import sessions
from data_pipelines.exogenous import apply_lag, ingest_exogenous, known_session
from data_pipelines.store import read_exogenous, read_quarantine

D = dt.date
NYSE = sessions("XNYS", D(2023, 1, 1))


def test_monthly_cpi_becomes_known_after_its_lag():
    vals = pl.DataFrame(dict(series=["CPI", "CPI"], stamp=[D(2024, 1, 1), D(2024, 2, 1)], value=[1.0, 2.0]))
    out = apply_lag(vals, {"CPI": 45}, NYSE)
    assert out["date"].to_list() == [D(2024, 2, 15), D(2024, 3, 18)]  # Mar 17 is a Sunday


def test_lag_zero_weekend_stamp_rolls_to_next_session_and_latest_stamp_wins():
    vals = pl.DataFrame(dict(series=["X"] * 3, stamp=[D(2024, 1, 5), D(2024, 1, 6), D(2024, 1, 7)],
                             value=[1.0, 2.0, 3.0]))
    out = apply_lag(vals, {}, NYSE)
    assert out.rows() == [("X", D(2024, 1, 5), 1.0), ("X", D(2024, 1, 8), 3.0)]


def test_known_session_past_the_calendar_is_null():
    out = known_session(pl.Series([D(2100, 1, 1)]), pl.Series([0]), NYSE)
    assert out.to_list() == [None]


def test_ingest_wide_macro_file(tmp_path):
    f = tmp_path / "macro.csv"
    f.write_text("DATE,VIX,CPI\n2024-01-02,13.2,\n2024-01-03,14.0,.\n2024-01,,300.1\n2024-01-04,x,\n")
    n = ingest_exogenous([f], tmp_path / "s", {"CPI": 45})
    exo = read_exogenous(tmp_path / "s")
    assert n == 3 and exo.rows() == [("CPI", D(2024, 2, 15), 300.1), ("VIX", D(2024, 1, 2), 13.2),
                                     ("VIX", D(2024, 1, 3), 14.0)]
    q = read_quarantine(tmp_path / "s")
    assert q.select("line", "reason").rows() == [(5, "unparsable number")]
