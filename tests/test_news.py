"""News session assignment: after-close news goes to the next session, time zones are honoured."""
import datetime as dt

import polars as pl

from data_pipelines.news import assign_sessions, ingest_news, parse_times
from data_pipelines.store import read_news, read_quarantine

D = dt.date


def sessions_of(texts, tz="America/New_York", exchange="XNYS"):
    return assign_sessions(parse_times(pl.Series(texts), tz), exchange).to_list()


def test_before_open_during_session_and_after_close():
    got = sessions_of(["2024-01-03T08:00:00", "2024-01-03T12:00:00", "2024-01-03T15:59:59",
                       "2024-01-03T16:00:00", "2024-01-03T18:30:00"])
    assert got == [D(2024, 1, 3)] * 3 + [D(2024, 1, 4)] * 2


def test_weekend_holiday_and_early_close():
    got = sessions_of(["2024-01-06T10:00:00",   # Saturday -> Monday
                       "2024-12-24T13:30:00",   # after the 13:00 early close -> next session 26th
                       "2024-12-24T12:30:00",   # before it -> that day
                       "2024-07-03T23:00:00"])  # evening before a holiday -> July 5th
    assert got == [D(2024, 1, 8), D(2024, 12, 26), D(2024, 12, 24), D(2024, 7, 5)]


def test_offsets_and_zones():
    # 21:30 UTC = 16:30 New York (after close) in winter; the same clock time in Tokyo is morning
    assert sessions_of(["2024-01-03T21:30:00Z", "2024-01-03T16:30:00-05:00", "2024-01-03T20:59:00+00:00"]) == \
        [D(2024, 1, 4), D(2024, 1, 4), D(2024, 1, 3)]
    assert sessions_of(["2024-01-04 16:30:00"], tz="UTC") == [D(2024, 1, 4)]           # 11:30 in New York
    assert sessions_of(["2024-01-05T10:00:00"], tz="Asia/Tokyo", exchange="XTKS") == [D(2024, 1, 5)]
    assert sessions_of(["2024-01-05T15:30:00"], tz="Asia/Tokyo", exchange="XTKS") == [D(2024, 1, 9)]


def test_bare_dates_are_taken_as_after_the_close():
    assert sessions_of(["2024-01-03"]) == [D(2024, 1, 4)]


def test_ingest_news_table_and_quarantine(tmp_path):
    f = tmp_path / "news.csv"
    f.write_text("published_at,ticker,headline\n"
                 "2024-01-03T18:00:00-05:00,aapl,AAPL beats estimates\n"
                 "2024-01-03T09:00:00-05:00,,Fed holds rates\n"
                 "not a time,MSFT,MSFT misses\n"
                 "2024-01-03T09:00:00-05:00,MSFT,\n")
    assert ingest_news(f, tmp_path / "s") == 2
    news = read_news(tmp_path / "s")
    assert news.schema == dict(ticker=pl.String, session=pl.Date, published_at=pl.Datetime("us", "UTC"),
                               headline=pl.String)
    rows = {r["headline"]: (r["ticker"], r["session"]) for r in news.iter_rows(named=True)}
    assert rows == {"AAPL beats estimates": ("AAPL", D(2024, 1, 4)), "Fed holds rates": (None, D(2024, 1, 3))}
    assert read_quarantine(tmp_path / "s")["reason"].to_list() == ["unparsable published_at", "missing value"]
    before = (tmp_path / "s" / "news.parquet").read_bytes()
    ingest_news(f, tmp_path / "s")
    assert (tmp_path / "s" / "news.parquet").read_bytes() == before  # idempotent
