"""Exchange sessions from exchange-calendars, and the rules that use them.

Rules (documented in the README's "bring your own data" section):
- A row whose date is not a session of its ticker's exchange is quarantined ("not a session").
- The calendar is built from the earliest date in the data (`start=`), not the library's 20-year
  default, so old history is checked too.
- Some calendars cannot be evaluated before a bound (XTKS: 1997-01-01). Before that bound a row is
  accepted on a weekday and quarantined on a weekend; such rows are counted as `unchecked`.
- Missing sessions (sessions between a ticker's first and last date that it has no row for, counted
  from the calendar's first session on) are reported per ticker and stored in the manifest's
  `missing_sessions` column. Nothing is filled in: no invented prices.
"""
from __future__ import annotations

import datetime as dt
import warnings
from functools import lru_cache

import numpy as np
import polars as pl

from data_pipelines.store import StoreError


@lru_cache(maxsize=64)
def bound(code: str) -> dt.date | None:
    """The first date calendar `code` can be evaluated from (None: no bound, e.g. XNYS)."""
    import exchange_calendars as xcals

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas deprecation notes raised inside exchange-calendars
        if code not in xcals.get_calendar_names():
            raise StoreError(f"unknown exchange {code!r} (use an exchange-calendars code such as XNYS, XLON, XTKS)")
        first = type(xcals.get_calendar(code, start="2020-01-01")).bound_min()
    return None if first is None else first.date()


@lru_cache(maxsize=16)
def calendar(code: str, start: dt.date):
    """The exchange-calendars calendar `code`, starting at `start` or at its bound if later."""
    import exchange_calendars as xcals

    first = bound(code)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xcals.get_calendar(code, start=max(start, first or start).isoformat())


def sessions(code: str, start: dt.date) -> pl.Series:
    """Session dates of `code` from `start` (or the calendar's bound) to its end, as pl.Date."""
    return pl.Series("session", calendar(code, start).sessions.values.astype("datetime64[D]")).cast(pl.Date)


def exchange_expr(exchange_of: dict[str, str], default: str) -> pl.Expr:
    """Each row's exchange code: the per-ticker override, else `default`."""
    if not exchange_of:
        return pl.lit(default)
    return pl.col("ticker").replace_strict(exchange_of, default=default, return_dtype=pl.String)


def exchange_sessions(rows: pl.DataFrame, exchange: pl.Expr) -> dict[str, pl.Series]:
    """Sessions of every exchange in use, each calendar starting at the earliest date it must cover."""
    starts = rows.group_by(exchange.alias("ex")).agg(pl.col("date").min()).iter_rows()
    return {code: sessions(code, start) for code, start in starts}


def session_reason(days: dict[str, pl.Series], exchange: pl.Expr) -> pl.Expr:
    """'not a session' for rows whose date is not a session of their exchange; null otherwise.

    Dates before a calendar's first evaluable session are accepted on weekdays (see module doc).
    """
    ok = pl.lit(False)
    for code, s in days.items():
        in_cal = pl.col("date").is_in(s.implode())
        if bound(code) is not None:
            in_cal = in_cal | ((pl.col("date") < bound(code)) & (pl.col("date").dt.weekday() <= 5))
        ok = pl.when(exchange == code).then(in_cal).otherwise(ok)
    return pl.when(ok).then(None).otherwise(pl.lit("not a session"))


def coverage(rows: pl.DataFrame, days: dict[str, pl.Series], exchange: pl.Expr) -> pl.DataFrame:
    """Per ticker: exchange, missing_sessions and unchecked rows (dated before the calendar's bound)."""
    out = []
    for code, s in days.items():
        start = bound(code) or dt.date(1, 1, 1)
        per = (rows.filter(exchange == code).group_by("ticker")
               .agg(first=pl.col("date").min().clip(start), last=pl.col("date").max(),
                    checked=(pl.col("date") >= start).sum(), unchecked=(pl.col("date") < start).sum()))
        arr = s.to_numpy()
        lo = np.searchsorted(arr, per["first"].to_numpy())
        hi = np.searchsorted(arr, per["last"].to_numpy(), side="right")
        span = np.where(per["checked"].to_numpy() > 0, hi - lo, 0)
        out.append(per.select("ticker", pl.lit(code).alias("exchange"),
                              pl.Series("missing_sessions", span - per["checked"].to_numpy()).clip(0),
                              pl.col("unchecked").cast(pl.Int64)))
    schema = dict(ticker=pl.String, exchange=pl.String, missing_sessions=pl.Int64, unchecked=pl.Int64)
    return pl.concat([pl.DataFrame(schema=schema), *[o.cast(schema) for o in out]])
