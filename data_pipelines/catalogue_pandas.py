"""The `bench catalogue` baseline: the steps of `ingest` on a drop of small files, as a plain pandas loop.

One `read_csv` per file (the layout from its header: Yahoo or Stooq), the ticker from the file name,
then over all rows at once: dates and numbers parsed, the value rules and the XNYS session check,
exact duplicates dropped, conflicts resolved (the row read last wins), the Adj Close adjustment,
and one Parquet file sorted by ticker and date. It keeps no catalogue, no quarantine reasons or
line numbers and no per-ticker manifest: less work than `ingest` does.
"""
from __future__ import annotations

from pathlib import Path

from data_pipelines.ingest_bench import NUM, pandas_rules


def pandas_ingest(drop: Path, store: Path) -> dict:
    import pandas as pd

    frames, files = [], sorted(p for p in drop.rglob("*") if p.suffix in (".csv", ".txt"))
    for path in files:
        df = pd.read_csv(path)
        df["ticker"] = path.name.removesuffix(".csv").removesuffix(".txt").upper()
        if "Adj Close" not in df.columns:
            df["Adj Close"] = df["Close"]
        frames.append(df[["ticker", "Date", *NUM]])
    df = pd.concat(frames, ignore_index=True)
    n_read = len(df)
    df, bad, conflicts, dups = pandas_rules(df)
    store.mkdir(parents=True, exist_ok=True)
    df.drop(columns=["Adj Close"]).to_parquet(store / "prices.parquet", index=False)
    return dict(files=len(files), rows_read=n_read, rows_stored=len(df),
                rows_quarantined=len(bad) + len(conflicts), duplicates=dups)
