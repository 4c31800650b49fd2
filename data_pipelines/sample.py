"""Rebuild the bundled sample store `data/sample` from real series that ship inside PyPI packages.

    pip install -e ".[sample]"        # arch, backtesting
    python -m data_pipelines.sample   # writes data/sample (a few hundred KB of Parquet)

Prices: S&P 500 and NASDAQ Composite (arch.data, 1999-2018), GOOG (backtesting.test, 2004-2013).
Macro: VIX, WTI spot, core CPI, Fama-French factors (arch.data), each keyed by the first session on
which its value was public (see PUBLICATION_LAG).
"""
from __future__ import annotations

import argparse
import gzip
import importlib.resources
from pathlib import Path

import exchange_calendars as xcals
import polars as pl

from data_pipelines.store import write_exogenous, write_prices

# name -> (package, resource, date format)
PRICES = {
    "SPX": ("arch.data.sp500", "sp500.csv.gz", "%m/%d/%Y"),
    "IXIC": ("arch.data.nasdaq", "nasdaq.csv.gz", "%m/%d/%Y"),
    "GOOG": ("backtesting.test", "GOOG.csv", "%Y-%m-%d"),
}
# series -> (package, resource, column, calendar days from the observation date to publication)
MACRO = {
    "vix": ("arch.data.vix", "vix.csv.gz", "vix", 0),  # index close, known at that session's close
    "wti": ("arch.data.wti", "wti.csv.gz", "DCOILWTICO", 1),  # spot price, published the next day
    "core_cpi": ("arch.data.core_cpi", "core-cpi.csv.gz", "CPILFESL", 45),  # month m out mid m+1
    "ff_mkt_rf": ("arch.data.frenchdata", "frenchdata.csv.gz", "Mkt-RF", 62),  # month m out ~m+2
}
PUBLICATION_LAG = {name: lag for name, (*_, lag) in MACRO.items()}


def _read_csv(package: str, resource: str) -> pl.DataFrame:
    raw = importlib.resources.files(package).joinpath(resource).read_bytes()
    if resource.endswith(".gz"):
        raw = gzip.decompress(raw)
    return pl.read_csv(raw, infer_schema_length=None)


def read_prices() -> dict[str, pl.DataFrame]:
    frames = {}
    for ticker, (package, resource, fmt) in PRICES.items():
        df = _read_csv(package, resource)
        df = df.rename({df.columns[0]: "Date"}).select(
            pl.col("Date").str.strptime(pl.Date, fmt).alias("date"),
            *[pl.col(c).cast(pl.Float64).alias(c.lower()) for c in ["Open", "High", "Low", "Close", "Volume"]],
        )
        frames[ticker] = df.sort("date")
    return frames


def _observation_dates(df: pl.DataFrame) -> pl.Series:
    first = str(df["Date"][0])
    if first.isdigit() and len(first) == 6:  # Fama-French months as YYYYMM: the month's last day
        return df["Date"].cast(pl.String).str.strptime(pl.Date, "%Y%m").dt.month_end()
    return df["Date"].str.strptime(pl.Date, "%m/%d/%Y")


def read_macro(sessions: pl.Series) -> pl.DataFrame:
    """Long table (series, date, value) with `date` = first session on or after publication."""
    out = []
    for name, (package, resource, column, lag) in MACRO.items():
        df = _read_csv(package, resource)
        df = pl.DataFrame({"known": _observation_dates(df), "value": df[column]}).with_columns(
            pl.col("known") + pl.duration(days=lag),
            pl.col("value").cast(pl.Float64, strict=False),  # FRED marks a missing day with "."
        ).drop_nulls().sort("known")
        df = df.join_asof(pl.DataFrame({"date": sessions}), left_on="known", right_on="date", strategy="forward")
        out.append(df.drop_nulls("date").group_by("date").agg(pl.col("value").last())
                   .with_columns(series=pl.lit(name)))
    return pl.concat(out).select("series", "date", "value").sort("series", "date")


def build(out: Path) -> None:
    frames = read_prices()
    start = min(df["date"].min() for df in frames.values())
    cal = xcals.get_calendar("XNYS", start=str(start))
    sessions = pl.Series("date", cal.sessions.to_numpy()).cast(pl.Date)
    for ticker, df in frames.items():  # the sample must already be clean: fail loudly if not
        bad = df.filter(~pl.col("date").is_in(sessions.implode()))
        if bad.height:
            raise SystemExit(f"{ticker}: {bad.height} rows on non-sessions, first {bad['date'][0]}")
    write_prices(out, frames, exchange="XNYS")
    write_exogenous(out, read_macro(sessions))
    print(f"wrote {out}: " + ", ".join(f"{t} {df.height} rows" for t, df in frames.items()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/sample"))
    build(parser.parse_args().out)
