"""News headlines, each assigned to the first session in which it could be acted on.

Rule: an item belongs to the first session whose close is strictly after its publication time. News
before the open or during the session goes to that session (known by its close); news at or after
the close, on a weekend or a holiday goes to the next session. Early closes come from the exchange
calendar. A bare date counts as published at 23:59:59 that day. Times with an offset (`2024-01-02T16:30:00-05:00`, `...Z`) are exact; naive times are read
in `timezone` (default: the exchange's own zone). The stored `published_at` is UTC.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl

from data_pipelines import calendars, store as st
from data_pipelines.formats import normalise
from data_pipelines.parse import ticker_invalid

ALIASES = {"publishedat": "published_at", "published": "published_at", "datetime": "published_at",
           "timestamp": "published_at", "time": "published_at", "date": "published_at",
           "ticker": "ticker", "symbol": "ticker", "headline": "headline", "title": "headline"}


AWARE = ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M%z")
NAIVE = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M")


def parse_times(text: pl.Series, timezone: str) -> pl.Series:
    """UTC datetimes from ISO-like text; naive values are taken to be in `timezone`."""
    t = pl.col("t").str.strip_chars()
    t = pl.when(t.str.contains(r"^\d{4}-\d{2}-\d{2}$")).then(t + "T23:59:59").otherwise(t)  # bare date
    t = t.str.replace(r"^(\d{4}-\d{2}-\d{2}) ", "${1}T").str.replace(r"Z$", "+00:00")
    aware = pl.coalesce([t.str.to_datetime(f, strict=False, time_unit="us", time_zone="UTC") for f in AWARE])
    naive = pl.coalesce([t.str.to_datetime(f, strict=False, time_unit="us") for f in NAIVE])
    naive = naive.dt.replace_time_zone(timezone, ambiguous="earliest", non_existent="null")
    out = pl.DataFrame({"t": text}).select(pl.coalesce(aware, naive.dt.convert_time_zone("UTC")))
    return out.to_series().alias("published_at")


def assign_sessions(published: pl.Series, exchange: str = "XNYS") -> pl.Series:
    """The first session of `exchange` whose close is strictly after each UTC time (null past the end)."""
    first = (published.min() or dt.datetime(2000, 1, 1)).date() - dt.timedelta(days=10)
    cal = calendars.calendar(exchange, first)
    closes = cal.closes.dt.tz_convert(None).to_numpy().astype("datetime64[us]").astype(np.int64)
    days = cal.sessions.values.astype("datetime64[D]")
    t = published.dt.replace_time_zone(None).cast(pl.Int64).to_numpy()
    idx = np.searchsorted(closes, t, side="right")
    ok = idx < len(closes)
    out = np.where(ok, days[np.minimum(idx, len(days) - 1)], np.datetime64("NaT"))
    return pl.Series("session", out).cast(pl.Date)


def read_news(path: Path, exchange: str, timezone: str | None, upper: bool = True):
    """(ticker, session, published_at, headline) rows and quarantined rows (line, reason, raw)."""
    df = pl.read_csv(path, infer_schema=False, encoding="utf8-lossy") if path.suffix.lower() not in (
        ".parquet", ".pq") else pl.read_parquet(path).select(pl.all().cast(pl.String))
    roles = {}
    for c in df.columns:
        role = ALIASES.get(normalise(c))
        if role and role not in roles:
            roles[role] = c
    if not {"published_at", "headline"} <= set(roles):
        raise st.StoreError(f"{path}: news needs published_at and headline columns; header is {df.columns}")
    tz = timezone or str(calendars.calendar(exchange, dt.date(2020, 1, 1)).tz)
    ticker = pl.col(roles["ticker"]).str.strip_chars() if "ticker" in roles else pl.lit(None, pl.String)
    df = df.with_row_index("line", offset=2).select(
        pl.col("line").cast(pl.Int64), (ticker.str.to_uppercase() if upper else ticker).alias("ticker"),
        pl.col(roles["published_at"]).alias("text"), pl.col(roles["headline"]).str.strip_chars().alias("headline"))
    df = df.with_columns(ticker=pl.when(pl.col("ticker") == "").then(None).otherwise("ticker"),
                         published_at=parse_times(df["text"], tz))
    df = df.with_columns(session=assign_sessions(df["published_at"], exchange))
    reason = (pl.when(pl.col("published_at").is_null()).then(pl.lit("unparsable published_at"))
              .when(pl.col("headline").is_null() | (pl.col("headline") == "")).then(pl.lit("missing value"))
              .when(pl.col("ticker").is_not_null() & ticker_invalid(pl.col("ticker"))).then(pl.lit("invalid ticker"))
              .when(pl.col("session").is_null()).then(pl.lit("after the calendar's last session")))
    df = df.with_columns(reason=reason, raw=pl.concat_str([pl.col(c).fill_null("") for c in
                                                           ("ticker", "text", "headline")], separator=","))
    bad = df.filter(pl.col("reason").is_not_null()).select("line", "reason", "raw")
    return df.filter(pl.col("reason").is_null()).select(list(st.NEWS_SCHEMA)), bad


def ingest_news(path: str | Path, store: str | Path, exchange: str = "XNYS", timezone: str | None = None) -> int:
    """Read headlines, assign sessions, merge into the store's news table (exact repeats dropped)."""
    path = Path(path)
    if not path.is_file():
        raise st.StoreError(f"news.path {path} is not a file")
    news, bad = read_news(path, exchange, timezone)
    table = pl.concat([st.read_news(store), news.cast(st.NEWS_SCHEMA)]).unique(maintain_order=True)
    st.write_news(store, table)
    st.update_quarantine(store, [str(path.resolve())], bad.with_columns(file=pl.lit(str(path.resolve()))))
    return news.height
