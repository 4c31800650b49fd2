"""predict's and monitor's frame reader keeps every row the as-of windows need, for every ticker,
whatever the length of its history before the first as-of session (a ticker listed days before it
has fewer bars than the window's margin, and none of its rows may be cut), alone or beside a ticker
with a long history."""
import datetime as dt

import polars as pl
import pytest

from conftest import ROOT
from data_pipelines.store import read_prices, write_prices
from forecast.inference import features

STATE = {"window": 16, "exog_level_window": None, "features": ["ret"], "feature_mean": [0.0], "feature_std": [1.0]}
MARGIN = STATE["window"] + 2  # read_frame's rows of history behind the first as-of session


@pytest.mark.parametrize("alone", [True, False])
@pytest.mark.parametrize("young", [0, 1, 5, 17, 18, 40])
def test_a_ticker_with_a_short_history_keeps_the_rows_its_windows_need(tmp_path, young, alone):
    spx = read_prices(str(ROOT / "data" / "sample"), ["SPX"]).drop("ticker")
    first, last = dt.date(2018, 12, 3), dt.date(2018, 12, 27)
    before = spx.filter(pl.col("date") < first).tail(young)  # `young` bars before the first as-of session
    listed = pl.concat([before, spx.filter(pl.col("date") >= first)])
    write_prices(tmp_path, {"YOUNG": listed} if alone else {"SPX": spx, "YOUNG": listed})
    tickers = ["YOUNG"] if alone else ["SPX", "YOUNG"]
    frame = features.read_frame(str(tmp_path), STATE, tickers, first, last)
    kept = frame.filter(pl.col("ticker") == "YOUNG")
    assert kept.filter(pl.col("date") < first).height == min(young, MARGIN)
    assert kept.filter(pl.col("date") >= first).height == listed.filter(pl.col("date").is_between(first, last)).height
    assert kept["pos"].to_list() == list(range(max(young - MARGIN, 0), young + kept.height - min(young, MARGIN)))
    if not alone:
        assert frame.filter((pl.col("ticker") == "SPX") & (pl.col("date") < first)).height >= MARGIN
