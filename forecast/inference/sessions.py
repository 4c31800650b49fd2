"""Exchange sessions for `predict` and `schedule`: which days are sessions of an exchange, the session
`n` sessions after an as-of, the latest session already closed, and the close times (early closes
included) the scheduler waits for.

All of it comes from exchange-calendars through `data_pipelines.calendars`, the calendars ingest
checked the store's dates against, so predict never disagrees with the store about what a session is.
"""
from __future__ import annotations

import datetime as dt

import numpy as np

from data_pipelines.calendars import calendar
from forecast.errors import UserError


def _days(exchange: str, start: dt.date) -> np.ndarray:
    """Session dates of `exchange` from on or before `start` to the calendar's end, datetime64[D]."""
    return calendar(exchange, start).sessions.values.astype("datetime64[D]")


def sessions(exchange: str, first: dt.date, last: dt.date) -> list[dt.date]:
    """The sessions of `exchange` from `first` to `last`, both included."""
    days = _days(exchange, first)
    lo, hi = np.searchsorted(days, np.datetime64(first)), np.searchsorted(days, np.datetime64(last), side="right")
    return days[lo:hi].astype(dt.date).tolist()


def is_session(exchange: str, day: dt.date) -> bool:
    return bool(sessions(exchange, day, day))


def after(exchange: str, asof: dt.date, n: int) -> dt.date:
    """The session `n` sessions after the session `asof` (n = the horizon: the target session)."""
    days = _days(exchange, asof)
    i = int(np.searchsorted(days, np.datetime64(asof))) + n
    if i >= len(days):
        raise UserError(f"date: {asof} + {n} sessions is past the end of the {exchange} calendar ({days[-1]})")
    return days[i].astype(dt.date)


def closes(exchange: str, start: dt.date) -> tuple[np.ndarray, np.ndarray]:
    """(sessions datetime64[D], their closes as UTC datetime64[s]) from on or before `start`; early
    closes (XNYS 13:00 on the day after Thanksgiving) are the calendar's own."""
    cal = calendar(exchange, start)
    close = cal.closes.dt.tz_convert("UTC").dt.tz_localize(None).values.astype("datetime64[s]")
    return cal.sessions.values.astype("datetime64[D]"), close


def latest_closed(exchange: str, now: dt.datetime) -> dt.date:
    """The last session of `exchange` whose close is at or before `now` (aware): `date=today`."""
    days, close = closes(exchange, (now - dt.timedelta(days=30)).date())
    utc = np.datetime64(now.astimezone(dt.timezone.utc).replace(tzinfo=None), "s")
    i = int(np.searchsorted(close, utc, side="right")) - 1
    return days[max(i, 0)].astype(dt.date)
