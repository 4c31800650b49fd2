"""The news modality's input drift: `news:rate` (the share of a session's tickers with a headline) is
what the model's news encoder sees arrive; a vendor feed that stops is input drift of that series,
found by the same test `monitor` runs on it, and nothing is found while the feed runs as it did."""
import datetime as dt
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from omegaconf import OmegaConf

from conftest import CONF
from data_pipelines.store import read_news, read_prices
from forecast.data.market import price_features
from forecast.inference.monitor import series_drift
from forecast.monitoring import drift, inputs

STOP = dt.date(2024, 10, 1)  # the feed's last headline is before this session
STATE = {"features": ["ret"], "modalities": ["price", "news"]}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """One market ingested twice: with its whole news feed, and with the feed stopped at STOP."""
    from data_pipelines.synthetic import generate

    base = tmp_path_factory.mktemp("news_drift")
    generate(base / "raw", tickers=20, days=400, seed=5, news_rate=0.15, split=False)
    news = pl.read_csv(base / "raw" / "news.csv")
    stopped = base / "stopped.csv"
    news.filter(pl.col("published_at").str.slice(0, 10) < str(STOP - dt.timedelta(days=1))).write_csv(stopped)
    out = {}
    for name, path in (("full", base / "raw" / "news.csv"), ("stopped", stopped)):
        subprocess.run([sys.executable, "-m", "forecast", "ingest", f"path={base / 'raw' / 'prices'}",
                        f"store={base / name}", f"news.path={path}"], check=True, capture_output=True)
        out[name] = str(base / name)
    return out


def rate_group(store: str):
    frame = price_features(read_prices(store)).filter(pl.col("ret").is_not_null())
    (group,) = [g for g in inputs.frame_inputs(frame, store, STATE) if g[2] == ["news:rate"]]
    return group


def test_news_rate_is_the_share_of_tickers_with_a_headline(stores):
    dates, rate, _ = rate_group(stores["full"])
    news = read_news(stores["full"]).select("ticker", "session").unique()
    tickers = read_prices(stores["full"])["ticker"].n_unique()
    expected = news.group_by("session").len().rename({"session": "date"})
    got = pl.DataFrame({"date": dates, "rate": rate[:, 0]}).join(expected, on="date", how="left")
    assert np.allclose(got["rate"], got["len"].fill_null(0) / tickers)
    assert 0.1 < rate.mean() < 0.2  # the market's news_rate, 0.15


@pytest.mark.parametrize("store", ["full", "stopped"])
def test_a_stopped_feed_is_news_drift_from_its_stop_and_a_running_one_is_not(stores, store):
    dates, rate, names = rate_group(stores[store])
    train = dates < dt.date(2024, 6, 1)
    ref = drift.fit(rate[train], names, 10)
    recent = dates >= dt.date(2024, 7, 1)
    c = OmegaConf.load(f"{CONF}/monitor.yaml").input
    (hits,) = series_drift(ref, rate[train], dates.filter(recent), rate[recent], c).values()
    days = dates.filter(recent).unique().sort().to_list()
    flagged = [days[s] for s, *_ in drift.episodes(hits)]
    if store == "full":
        assert flagged == []
    else:
        assert len(flagged) == 1 and STOP <= flagged[0] <= STOP + dt.timedelta(days=31), flagged
