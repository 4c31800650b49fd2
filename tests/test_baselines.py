"""Baselines learn what they should, from the train split only, and an optional one skips cleanly."""
import sys
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest

from forecast.data.market import FEATURES
from forecast.evaluation.baselines import (
    BaselineUnavailable,
    baseline_predictions,
    hist_mean,
    lagged,
    lgbm,
    ridge,
    zero,
)


def _market(n=1500, tickers=("A", "B"), phi=0.4, seed=0, nonlinear=False):
    """A MarketData-like frame: returns with a planted one-day dependence, split 60/20/20 by date."""
    rng = np.random.default_rng(seed)
    parts = []
    for t in tickers:
        eps = rng.normal(0, 0.01, n + 1)
        ret = np.zeros(n + 1)
        for i in range(1, n + 1):
            signal = 0.01 * np.sign(ret[i - 1]) * (abs(ret[i - 1]) > 0.01) if nonlinear else phi * ret[i - 1]
            ret[i] = signal + eps[i]
        split = np.where(np.arange(n) < 0.6 * n, "train", np.where(np.arange(n) < 0.8 * n, "val", "test"))
        extra = {c: rng.normal(size=n) for c in FEATURES if c != "ret"}
        parts.append(pl.DataFrame(dict(ticker=t, date=[date(2000, 1, 1) + timedelta(days=i) for i in range(n)],
                                       ret=ret[:n], target=ret[1:], split=split, **extra)))
    return pl.concat(parts)


def _ic(pred, frame):
    return np.corrcoef(pred.to_numpy(), frame.filter(pl.col("split") == "test")["target"].to_numpy())[0, 1]


def test_naive_baselines():
    f = _market()
    test, train = f.filter(pl.col("split") == "test"), f.filter(pl.col("split") == "train")
    assert zero(test, train).to_list() == [0.0] * test.height
    means = train.group_by("ticker").agg(pl.col("target").mean()).sort("ticker")["target"].to_list()
    assert sorted(set(hist_mean(test, train).to_list())) == sorted(means)


def test_lagged_features_look_back_within_each_ticker_only():
    f = _market(n=20)
    x = lagged(f, ["ret"], 3)  # (N, 3): ret at t, t-1, t-2
    a = f.filter(pl.col("ticker") == "A")["ret"].to_numpy()
    assert np.allclose(x[5], [a[5], a[4], a[3]])
    assert np.allclose(x[20], [f["ret"][20], 0, 0])  # ticker B's first row: no history, not A's


def test_ridge_recovers_an_autoregression():
    f = _market(phi=0.4)
    assert _ic(ridge(f), f) > 0.3


def test_fitted_baselines_never_see_test_labels():
    f = _market(phi=0.4)
    shuffled = f.with_columns(target=pl.when(pl.col("split") == "test").then(pl.col("target").shuffle(seed=1))
                              .otherwise(pl.col("target")))
    assert ridge(f).equals(ridge(shuffled))
    if _has_lightgbm():
        assert lgbm(f).equals(lgbm(shuffled))


def _has_lightgbm() -> bool:
    try:
        import lightgbm  # noqa: F401
    except ImportError:
        return False
    return True


def test_lgbm_learns_a_nonlinear_signal():
    pytest.importorskip("lightgbm")
    f = _market(nonlinear=True, n=3000)
    assert _ic(lgbm(f), f) > 0.2


def test_missing_lightgbm_is_skipped_with_a_clear_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightgbm", None)  # import lightgbm -> ImportError
    f = _market(n=300)
    with pytest.raises(BaselineUnavailable, match="LightGBM is not installed"):
        lgbm(f)
    preds, skipped = baseline_predictions(f, ["zero", "ridge", "lgbm"])
    assert list(preds) == ["zero", "ridge"] and "pip install lightgbm" in skipped["lgbm"]
    assert all(len(p) == f.filter(pl.col("split") == "test").height for p in preds.values())


def test_unknown_baseline_is_named():
    with pytest.raises(KeyError, match="nope"):
        baseline_predictions(_market(n=50), ["zero", "nope"])
