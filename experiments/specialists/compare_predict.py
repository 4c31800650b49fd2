"""The rows `predict` wrote with the full model and with the routed model, side by side: same keys,
same columns, and how close the forecasts are.

    python experiments/specialists/compare_predict.py <full.db> <routed.db>
"""
from __future__ import annotations

import sqlite3
import sys

import numpy as np
import polars as pl


def rows(db: str) -> pl.DataFrame:
    with sqlite3.connect(db) as c:
        return pl.read_database("SELECT * FROM predictions ORDER BY asof, ticker", c)


def main(full_db: str, routed_db: str) -> None:
    full, routed = rows(full_db), rows(routed_db)
    keys = ["ticker", "asof", "horizon", "target"]
    same_keys = full.select(keys).equals(routed.select(keys))
    corr = float(np.corrcoef(full["forecast"].to_numpy(), routed["forecast"].to_numpy())[0, 1]) if same_keys else None
    agree = float((full["direction"] == routed["direction"]).mean()) if same_keys else None
    print(f"full: {full.height} rows, models {full['model'].unique().to_list()}; routed: {routed.height} rows, "
          f"models {routed['model'].unique().to_list()}")
    print(f"same columns: {full.columns == routed.columns}; same (ticker, asof, horizon, target) keys: {same_keys}")
    print(f"correlation of the forecasts: {corr}; same direction: {agree}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
