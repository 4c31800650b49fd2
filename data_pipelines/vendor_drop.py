"""A synthetic vendor drop of many small price files, for `bench catalogue` and its tests.

Half the files are Yahoo single-ticker files (`yahoo/Y000123.csv`, `Date,Open,High,Low,Close,Adj
Close,Volume`); the rest are Stooq files, one per ticker and year (`stooq/<year>/s000123.us.txt`,
`Date,Open,High,Low,Close,Volume,OpenInt`), so one ticker spans `years` files. Every file holds
`rows` consecutive XNYS sessions. A `dirty` share of the files also carries an exact duplicate row,
a conflicting duplicate (the later row wins), a row whose high is below its close and a Saturday:
each file's counts are known, so the ingest's accounting can be checked exactly (`expected`).

Text is formatted by polars for all rows at once and written file by file: 100,000 files take a few
seconds.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl

from data_pipelines import calendars

YAHOO = "Date,Open,High,Low,Close,Adj Close,Volume"
STOOQ = "Date,Open,High,Low,Close,Volume,OpenInt"
FIRST_YEAR = 2012


def layout(files: int, years: int) -> pl.DataFrame:
    """One row per file: path, ticker, kind (yahoo/stooq) and the index of its first session."""
    n_stooq = (files // 2) // years * years
    n_yahoo = files - n_stooq
    yahoo = pl.DataFrame(dict(path=[f"yahoo/Y{i:06d}.csv" for i in range(n_yahoo)],
                              ticker=[f"Y{i:06d}" for i in range(n_yahoo)], kind="yahoo", year=None))
    k = np.arange(n_stooq)
    stooq = pl.DataFrame(dict(path=[f"stooq/{FIRST_YEAR + j % years}/s{j // years:06d}.us.txt" for j in k],
                              ticker=[f"S{j // years:06d}.US" for j in k], kind="stooq",
                              year=(FIRST_YEAR + k % years).tolist()))
    return pl.concat([yahoo, stooq.cast({"year": pl.Int64})], how="vertical_relaxed")


def _starts(files: pl.DataFrame, sessions: np.ndarray, rows: int, rng) -> np.ndarray:
    """First session index of each file: anywhere for Yahoo, within its year for Stooq."""
    years = sessions.astype("datetime64[Y]").astype(int) + 1970
    lo = np.searchsorted(years, files["year"].fill_null(FIRST_YEAR).to_numpy())
    hi = np.searchsorted(years, files["year"].fill_null(FIRST_YEAR).to_numpy(), side="right") - rows
    anywhere = rng.integers(0, len(sessions) - rows, files.height)
    within = lo + rng.integers(0, np.maximum(hi - lo, 1))
    return np.where(files["kind"].to_numpy() == "yahoo", anywhere, within)


def _rows(files: pl.DataFrame, sessions: np.ndarray, rows: int, seed: int) -> pl.DataFrame:
    """Every file's rows: file index, date, open, high, low, close, adj close, volume."""
    rng = np.random.default_rng(seed)
    n = files.height
    start = _starts(files, sessions, rows, rng)
    idx = (start[:, None] + np.arange(rows)).ravel()                     # (n * rows,)
    close = 20 * np.exp(rng.normal(0, 1, n))[:, None] * np.exp(np.cumsum(rng.normal(0, 0.01, (n, rows)), 1))
    close = np.round(close.ravel(), 4)
    opn = np.round(close * np.exp(rng.normal(0, 0.005, n * rows)), 4)
    spread = np.abs(rng.normal(0, 0.01, n * rows))
    return pl.DataFrame(dict(file=np.repeat(np.arange(n), rows), date=sessions[idx], open=opn,
                             high=np.round(np.maximum(opn, close) * (1 + spread), 4),
                             low=np.round(np.minimum(opn, close) * (1 - spread), 4), close=close,
                             volume=rng.integers(1_000, 10_000_000, n * rows).astype(np.float64)))


def _dirt(body: pl.DataFrame, dirty_files: np.ndarray) -> pl.DataFrame:
    """Four extra rows per dirty file: an exact duplicate, a conflicting duplicate (the later row
    wins: the earlier one is quarantined), a high below the close, a Saturday."""
    first = body.filter(pl.col("file").is_in(dirty_files)).group_by("file", maintain_order=True).head(2)
    row0 = first.group_by("file", maintain_order=True).first()
    row1 = first.group_by("file", maintain_order=True).last()
    saturday = pl.col("date") + pl.duration(days=(5 - pl.col("date").dt.weekday() + 7) % 7 + 1)
    extra = [row0, row1.with_columns(volume=pl.col("volume") + 1),
             row0.with_columns(high=pl.col("close") * 0.9, date=pl.col("date").dt.offset_by("1d")),
             row0.with_columns(date=saturday)]
    return pl.concat([body, *extra])


def write(out: str | Path, files: int = 1000, rows: int = 40, years: int = 5, dirty: float = 0.01,
          seed: int = 0) -> dict:
    """Write the drop under `out`; returns its counts (files, rows, tickers, expected accounting)."""
    out = Path(out)
    plan = layout(files, years)
    sessions = calendars.sessions("XNYS", dt.date(2000, 1, 1)).to_numpy().astype("datetime64[D]")
    sessions = sessions[sessions <= np.datetime64("2024-12-31")]
    body = _rows(plan, sessions, rows, seed)
    dirty_files = np.flatnonzero(np.random.default_rng(seed + 1).random(plan.height) < dirty)
    body = _dirt(body, dirty_files) if len(dirty_files) else body
    text = pl.concat_str([pl.col("date").cast(pl.String), *[pl.col(c).cast(pl.String) for c in
                          ("open", "high", "low", "close")]], separator=",")
    kinds = plan["kind"].to_numpy()
    body = body.with_columns(yahoo=pl.Series(kinds == "yahoo").gather(body["file"]))
    line = pl.when(pl.col("yahoo")) \
        .then(pl.concat_str([text, pl.col("close").cast(pl.String), pl.col("volume").cast(pl.Int64).cast(pl.String)],
                            separator=",")) \
        .otherwise(pl.concat_str([text, pl.col("volume").cast(pl.Int64).cast(pl.String), pl.lit("0")], separator=","))
    per_file = (body.with_columns(line=line).group_by("file").agg(pl.col("line").str.join("\n"))
                .sort("file")["line"].to_list())
    for d in {str(Path(p).parent) for p in plan["path"]}:
        (out / d).mkdir(parents=True, exist_ok=True)
    for path, kind, lines in zip(plan["path"], kinds, per_file):
        (out / path).write_text(f"{YAHOO if kind == 'yahoo' else STOOQ}\n{lines}\n")
    n_dirty = len(dirty_files)
    return dict(files=plan.height, rows=body.height, tickers=plan["ticker"].n_unique(), dirty_files=n_dirty,
                expected=dict(rows_read=body.height, duplicates=n_dirty, rows_quarantined=3 * n_dirty,
                              rows_stored=body.height - 4 * n_dirty))
