"""News headlines, each assigned to the first session in which it could be acted on.

Rule: an item belongs to the first session whose close is strictly after its publication time. News
before the open or during the session goes to that session (known by its close); news at or after
the close, on a weekend or a holiday goes to the next session. Early closes come from the exchange
calendar: the ticker's own exchange (`exchanges`), else `exchange` (also for market-wide items). A
bare date counts as published at 23:59:59 that day. Times with an offset (`2024-01-02T16:30:00-05:00`,
`...Z`) are exact; naive times are read in `timezone` (default: the exchange's own zone). The stored
`published_at` is UTC.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl

from data_pipelines import calendars
from data_pipelines import store as st
from data_pipelines.formats import normalise
from data_pipelines.parse import ticker_invalid

NEWS_ALIASES = {"publishedat": "published_at", "published": "published_at", "datetime": "published_at",
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


def parse_news_file(path: Path, exchange: str, timezone: str | None, upper: bool = True,
                    exchanges: dict[str, str] | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(ticker, session, published_at, headline) rows and quarantined rows (line, reason, raw)."""
    df = _read(path)
    roles = {}
    for c in df.columns:
        role = NEWS_ALIASES.get(normalise(c))
        if role and role not in roles:
            roles[role] = c
    if not {"published_at", "headline"} <= set(roles):
        raise st.StoreError(f"{path}: news needs published_at and headline columns; header is {df.columns}")
    ticker = pl.col(roles["ticker"]).str.strip_chars() if "ticker" in roles else pl.lit(None, pl.String)
    df = df.with_row_index("line", offset=2).select(
        pl.col("line").cast(pl.Int64), (ticker.str.to_uppercase() if upper else ticker).alias("ticker"),
        pl.col(roles["published_at"]).alias("text"), pl.col(roles["headline"]).str.strip_chars().alias("headline"))
    df = df.with_columns(ticker=pl.when(pl.col("ticker") == "").then(None).otherwise("ticker"))
    df = _timed(df, exchange, exchanges or {}, timezone)
    reason = (pl.when(pl.col("published_at").is_null()).then(pl.lit("unparsable published_at"))
              .when(pl.col("headline").is_null() | (pl.col("headline") == "")).then(pl.lit("missing value"))
              .when(pl.col("ticker").is_not_null() & ticker_invalid(pl.col("ticker"))).then(pl.lit("invalid ticker"))
              .when(pl.col("session").is_null()).then(pl.lit("after the calendar's last session")))
    df = df.with_columns(reason=reason, raw=pl.concat_str([pl.col(c).fill_null("") for c in
                                                           ("ticker", "text", "headline")], separator=","))
    bad = df.filter(pl.col("reason").is_not_null()).select("line", "reason", "raw")
    return df.filter(pl.col("reason").is_null()).select(list(st.NEWS_SCHEMA)), bad


def _read(path: Path) -> pl.DataFrame:
    """Every column of a news CSV or Parquet file as text; StoreError when it cannot be read."""
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pl.read_parquet(path).select(pl.all().cast(pl.String))
        return pl.read_csv(path, infer_schema=False, encoding="utf8-lossy")
    except (OSError, pl.exceptions.PolarsError) as e:
        why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise st.StoreError(f"{path}: unreadable ({why})") from None


def _timed(df: pl.DataFrame, exchange: str, exchanges: dict[str, str], timezone: str | None) -> pl.DataFrame:
    """`df` plus published_at (UTC) and session, each row on its ticker's exchange, in row order."""
    code = pl.col("ticker").replace_strict(exchanges, default=exchange, return_dtype=pl.String) \
        if exchanges else pl.lit(exchange)
    df = df.with_columns(code=code.fill_null(exchange))
    parts = [df.head(0).with_columns(published_at=pl.lit(None, pl.Datetime("us", "UTC")),
                                     session=pl.lit(None, pl.Date))]
    for (c,), part in df.group_by("code", maintain_order=True):
        tz = timezone or str(calendars.calendar(c, dt.date(2020, 1, 1)).tz)
        part = part.with_columns(published_at=parse_times(part["text"], tz))
        parts.append(part.with_columns(session=assign_sessions(part["published_at"], c)))
    return pl.concat(parts).sort("line").drop("code")


def ingest_news(path: str | Path, store: str | Path, exchange: str = "XNYS", timezone: str | None = None,
                exchanges: dict[str, str] | None = None) -> int:
    """Read headlines, assign sessions, merge into the store's news table (exact repeats dropped).
    `exchanges` maps tickers to their exchange when it is not `exchange`."""
    path = Path(path)
    if not path.is_file():
        raise st.StoreError(f"news.path {path} is not a file")
    news, bad = parse_news_file(path, exchange, timezone, exchanges=exchanges)
    table = pl.concat([st.read_news(store), news.cast(st.NEWS_SCHEMA)]).unique(maintain_order=True)
    st.write_news(store, table)
    st.update_quarantine(store, [str(path.resolve())], bad.with_columns(file=pl.lit(str(path.resolve()))))
    return news.height
