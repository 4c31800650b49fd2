"""Exchange sessions from exchange-calendars, and the rules that use them.

Rules (documented in the README's "bring your own data" section):
- A row whose date is not a session of its ticker's exchange is quarantined ("not a session").
- The calendar is built from the earliest date in the data (`start=`, rounded down to its decade),
  not the library's 20-year default, so old history is checked too.
- Which exchange a ticker trades on (explicit, from its name, or the best-fitting calendar) is
  decided in `exchanges.py`.
- Some calendars cannot be evaluated before a bound (XTKS: 1997-01-01). Before that bound a row is
  accepted on a weekday and quarantined on a weekend; such rows are counted as `unchecked`.
- Missing sessions (sessions between a ticker's first and last date that it has no row for, counted
  from the calendar's first session on) are reported per ticker and stored in the manifest's
  `missing_sessions` column. Nothing is filled in: no invented prices.

Session arrays are cached on disk (`~/.cache/forecast/calendars`, or under $XDG_CACHE_HOME) per
exchange, decade and exchange-calendars version: see `_session_days`.
"""
from __future__ import annotations

import datetime as dt
import os
import time
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl

from data_pipelines.store import StoreError

SESSION_CACHE_DAYS = 60


@lru_cache(maxsize=64)
def bound(code: str) -> dt.date | None:
    """The first date calendar `code` can be evaluated from (None: no bound, e.g. XNYS)."""
    import exchange_calendars as xcals
    from exchange_calendars import calendar_utils

    if code not in xcals.get_calendar_names():
        raise StoreError(f"unknown exchange {code!r} (use an exchange-calendars code such as XNYS, XLON, XTKS)")
    factories = getattr(calendar_utils, "_default_calendar_factories", {})  # the class, without building it
    cls = factories.get(xcals.resolve_alias(code)) or type(_build(code, dt.date(2020, 1, 1)))
    first = cls.bound_min()
    return None if first is None else first.date()


def _build(code: str, start: dt.date):
    import exchange_calendars as xcals

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas deprecation notes raised inside exchange-calendars
        return xcals.get_calendar(code, start=start.isoformat())


def calendar(code: str, start: dt.date):
    """The exchange-calendars calendar `code`, starting on or before `start` (at the start of its
    decade, so that calendars are built once for nearby starts) or at its bound if later."""
    return _calendar(code, dt.date(start.year // 10 * 10, 1, 1))


@lru_cache(maxsize=128)
def _calendar(code: str, start: dt.date):
    first = bound(code)
    return _build(code, max(start, first or start))


def sessions(code: str, start: dt.date) -> pl.Series:
    """Session dates of `code` from on or before `start` (or from the calendar's bound) to its end, as pl.Date."""
    return pl.Series("session", _session_days(code, dt.date(start.year // 10 * 10, 1, 1))).cast(pl.Date)


@lru_cache(maxsize=128)
def _session_days(code: str, decade: dt.date) -> np.ndarray:
    """(S,) datetime64[D] sessions, kept on disk between runs: building the two dozen calendars an
    exchange fit needs takes seconds, loading them milliseconds. A cached array is used while it
    runs SESSION_CACHE_DAYS past today (a fresh build runs a year past it), or for a day after it
    was built (a calendar whose holidays are listed only to a fixed year, such as XSHG, ends
    sooner: rebuilt once a day, not on every run), and for the same exchange-calendars version,
    whose rules alone decide the sessions."""
    import exchange_calendars as xcals

    path = _cache_dir() / f"{code}-{decade.isoformat()}-xcals{xcals.__version__}.npy"
    try:
        days = np.load(path)
        fresh = time.time() - path.stat().st_mtime < 86_400
        if days.dtype == np.dtype("datetime64[D]") and (
                fresh or days[-1] >= np.datetime64(dt.date.today()) + SESSION_CACHE_DAYS):
            return days
    except (OSError, ValueError, IndexError):
        pass
    days = calendar(code, decade).sessions.values.astype("datetime64[D]")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, days)
        os.replace(tmp, path)  # atomic: another process reads the old array or the new one
    except OSError:
        pass  # a read-only home: build each run
    return days


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "forecast" / "calendars"


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


def coverage(rows: pl.DataFrame | dict[str, pl.DataFrame], exchange_of: dict[str, str], default: str) -> pl.DataFrame:
    """Per ticker of `rows` (ticker, date, each ticker's rows by date; or ticker -> frame with a date
    column): exchange, missing_sessions, unchecked (rows dated before the calendar's bound, accepted
    on weekdays)."""
    if isinstance(rows, dict):
        rows = pl.concat([df.select(pl.lit(t, pl.String).alias("ticker"), "date") for t, df in rows.items()])
    bounds = {c: b for c in {*exchange_of.values(), default} if (b := bound(c)) is not None}
    first_ok = pl.col("exchange").replace_strict(bounds, default=None, return_dtype=pl.Date)
    per = (rows.select("ticker", "date", exchange=exchange_expr(exchange_of, default))
           .group_by("ticker", maintain_order=True)
           .agg(pl.col("exchange").first(), first=pl.col("date").first(), last=pl.col("date").last(), n=pl.len(),
                unchecked=(pl.col("date") < first_ok.first()).sum().cast(pl.Int64)))
    per = per.with_columns(first=pl.max_horizontal("first", first_ok), checked=pl.col("n") - pl.col("unchecked"))
    missing = np.zeros(per.height, dtype=np.int64)
    for code in per["exchange"].unique():
        mine = (per["exchange"] == code).to_numpy()
        days = sessions(code, per.filter(mine)["first"].min()).to_numpy()
        lo = np.searchsorted(days, per["first"].to_numpy()[mine])
        hi = np.searchsorted(days, per["last"].to_numpy()[mine], side="right")
        checked = per["checked"].to_numpy()[mine]
        missing[mine] = np.where(checked > 0, np.maximum(hi - lo - checked, 0), 0)
    return per.select("ticker", "exchange", pl.Series("missing_sessions", missing), "unchecked")
