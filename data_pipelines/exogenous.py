"""Exogenous date-value series (VIX, CPI, rates, ...) keyed by the session their value became known.

A macro file is wide (`date, VIX, CPI, ...`) or long (`series, date, value`). A value stamped `d`
(for a monthly series, its period's first day) with publication lag `L` calendar days becomes known
on the first session on or after `d + L`, and is usable from that session's close on. Several values
that become known on the same session: the latest stamp wins. A model at session t sees only values
whose known session is <= t (the as-of join is in `forecast`), so nothing looks ahead as long as the
lag is honest: January's CPI, stamped 2024-01-01 and published mid-February, needs `lag_days: {CPI: 45}`.
Blank cells (and the markers in BLANK) are not values: a wide file mixing daily and monthly series
is mostly blank. Unparsable dates and numbers are quarantined.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from data_pipelines import calendars
from data_pipelines import store as st
from data_pipelines.formats import infer_date_format, normalise
from data_pipelines.parse import date_expr
from data_pipelines.rawtext import unexpected

_VALUES = dict(series=pl.String, stamp=pl.Date, value=pl.Float64, line=pl.Int64)
BLANK = ["", ".", "NA", "N/A", "#N/A", "NaN", "nan", "null"]  # no value (FRED writes '.'): not a row
DATE_NAMES = {"date", "datetime", "timestamp", "day", "observationdate", "month", "period"}


def read_series(path: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(series, stamp, value, line) of every value; and quarantined rows (line, reason, raw)."""
    text = _read(path)
    cols = {normalise(c): c for c in text.columns}
    if {"series", "value"} <= set(cols) and DATE_NAMES & set(cols):
        date_col = cols[next(n for n in cols if n in DATE_NAMES)]
        long = text.select(pl.col(cols["series"]).alias("series"), pl.col(date_col).alias("date"),
                           pl.col(cols["value"]).alias("value"), "line")
    else:
        date_col = next((c for c in text.columns if normalise(c) in DATE_NAMES), text.columns[0])
        values = [c for c in text.columns if c not in (date_col, "line")]
        if not values:
            raise st.StoreError(f"{path}: no value columns besides {date_col!r}")
        long = text.rename({date_col: "date"}).unpivot(values, index=["date", "line"], variable_name="series",
                                                       value_name="value")
    return _typed(long, path)


def _read(path: Path) -> pl.DataFrame:
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            df = pl.read_parquet(path)
            df = df.select(pl.all().cast(pl.String))
        else:
            df = pl.read_csv(path, infer_schema=False, encoding="utf8-lossy", truncate_ragged_lines=True)
    except (OSError, pl.exceptions.PolarsError) as e:
        why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise st.StoreError(f"{path}: unreadable ({why})") from None
    if df.height == 0:
        raise st.StoreError(f"{path}: no data rows")
    return df.with_row_index("line", offset=2).with_columns(pl.col("line").cast(pl.Int64))


def _typed(long: pl.DataFrame, path: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    d = pl.col("date").str.strip_chars()
    long = long.with_columns(day=pl.when(d.str.contains(r"^\d{4}-\d{2}$")).then(d + "-01").otherwise(d),
                             v=pl.col("value").str.strip_chars())
    long = long.filter(~(pl.col("v").is_null() | pl.col("v").is_in(BLANK)))
    fmt = infer_date_format(long["day"].drop_nulls().head(50).to_list())
    df = long.with_columns(stamp=date_expr(pl.col("day"), fmt), val=pl.col("v").cast(pl.Float64, strict=False))
    reason = (pl.when(pl.col("stamp").is_null()).then(pl.lit(f"unparsable date (expected {fmt})"))
              .when(pl.col("val").is_null()).then(pl.lit("unparsable number"))
              .when(pl.col("val").is_infinite()).then(pl.lit("NaN/inf")))
    raw = pl.concat_str([pl.col(c).fill_null("") for c in ("series", "date", "value")], separator=",")
    df = df.with_columns(reason=reason, raw=raw)
    bad = df.filter(pl.col("reason").is_not_null()).select("line", "reason", "raw")
    good = df.filter(pl.col("reason").is_null()).select("series", "stamp", pl.col("val").alias("value"), "line")
    return good, bad


def known_session(stamps: pl.Series, lag_days: pl.Series, sessions: pl.Series) -> pl.Series:
    """First session on or after stamp + lag (null when past the calendar's last session)."""
    due = (stamps.cast(pl.Int32) + lag_days.cast(pl.Int32)).to_numpy()
    days = sessions.cast(pl.Int32).to_numpy()
    idx = np.searchsorted(days, due, side="left")
    out = np.where(idx < len(days), days[np.minimum(idx, len(days) - 1)], np.iinfo(np.int32).min)
    return pl.Series("date", out).replace(np.iinfo(np.int32).min, None).cast(pl.Date)


def apply_lag(values: pl.DataFrame, lag_days: dict, sessions: pl.Series) -> pl.DataFrame:
    """series, date (known session), value: one row per (series, date), the latest stamp winning
    (on equal stamps, the later row: a revision)."""
    default = int(lag_days.get("default", 0))
    lag = values["series"].replace_strict({k: int(v) for k, v in lag_days.items()}, default=default,
                                          return_dtype=pl.Int32)
    out = values.with_columns(date=known_session(values["stamp"], lag, sessions))
    return (out.drop_nulls("date").sort("series", "date", "stamp", maintain_order=True)
            .group_by("series", "date", maintain_order=True).agg(pl.col("value").last()))


def ingest_exogenous(paths: list[Path], store: str | Path, lag_days: dict, exchange: str = "XNYS",
                     optional: list[Path] = (), rejected: dict | None = None,
                     default_lags: dict | None = None) -> int:
    """Read macro files, apply publication lags on `exchange`'s sessions, merge into the store (series
    read here replace same-named ones; others are kept). Returns the number of values read.

    A file in `optional` (found in a vendor drop) that cannot be read is recorded in `rejected`
    instead of raising. `default_lags` (from a lag_days.json) apply to series `lag_days` does not name;
    unlike `lag_days`, they may name series the files lack."""
    parts = []
    for p in map(Path, paths):
        try:
            parts.append((p, *read_series(p)))
        except Exception as e:  # noqa: BLE001 - a file found in a drop is rejected, never stops the rest
            if p not in optional or rejected is None:
                raise
            rejected[str(p)] = str(e).removeprefix(f"{p}: ") if isinstance(e, st.StoreError) else unexpected(e)
    if not parts:
        return 0
    values = pl.concat([pl.DataFrame(schema=_VALUES), *(v for _, v, _ in parts)])
    names = set(values["series"].unique())
    unknown = sorted(set(lag_days) - names - {"default"})
    if unknown:  # a typo here would silently give CPI a lag of 0: a look-ahead
        raise st.StoreError(f"exogenous.lag_days: unknown series {unknown}; the files have {sorted(names)}")
    lags = {**(default_lags or {}), **lag_days}
    table = apply_lag(values, lags, calendars.sessions(exchange, values["stamp"].min())) if values.height \
        else pl.DataFrame(schema=st.EXOGENOUS_SCHEMA)
    old = st.read_exogenous(store)
    if old is not None:
        table = pl.concat([old.filter(~pl.col("series").is_in(list(names))).cast(st.EXOGENOUS_SCHEMA),
                           table.select(list(st.EXOGENOUS_SCHEMA)).cast(st.EXOGENOUS_SCHEMA)])
    st.write_exogenous(store, table)
    files = [str(p.resolve()) for p, _, _ in parts]
    bad = pl.concat([b.with_columns(file=pl.lit(f)) for f, (_, _, b) in zip(files, parts)])
    st.update_quarantine(store, files, bad)
    return values.height
