"""Metrics, backtest and statistics against hand-computed examples, and properties that can fail."""
import math
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest
from scipy import stats as st

from forecast.evaluation.backtest import daily_returns, max_drawdown, strategy_metrics, weights
from forecast.evaluation.metrics import ic_series, point_metrics, rank_metrics
from forecast.evaluation.stats import block_bootstrap, confidence_interval, diebold_mariano, mean_stat, sharpe_stat

D0 = date(2020, 1, 1)


def _frame(tickers, n_dates, pred, realised):
    """Rows ordered by date, then ticker."""
    dates = [D0 + timedelta(days=i) for i in range(n_dates) for _ in tickers]
    return pl.DataFrame(dict(ticker=list(tickers) * n_dates, date=dates, pred=np.asarray(pred, float),
                             realised=np.asarray(realised, float)))


def test_point_metrics_by_hand():
    f = _frame(["A"], 4, [0.01, -0.02, 0.0, 0.03], [0.02, 0.01, -0.01, 0.03])
    m = point_metrics(f)
    assert m["mse"] == pytest.approx((0.01 ** 2 + 0.03 ** 2 + 0.01 ** 2 + 0) / 4)
    assert m["mae"] == pytest.approx((0.01 + 0.03 + 0.01 + 0) / 4)
    assert m["dir_acc"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)  # a zero forecast counts one half


def test_cross_sectional_ic_by_hand():
    # date 1: a perfect ranking (IC 1); date 2: corr([1,2,3],[3,1,2]) = -1/2 for both Pearson and Spearman
    f = _frame(["A", "B", "C"], 2, [1, 2, 3, 1, 2, 3], [1, 2, 3, 3, 1, 2])
    m = rank_metrics(f)
    assert m["ic"] == pytest.approx(0.25) and m["rank_ic"] == pytest.approx(0.25)
    assert m["icir"] == pytest.approx(0.25 / np.std([1, -0.5], ddof=1))


def test_single_ticker_ic_uses_blocks_of_sessions_and_spearman_differs_from_pearson():
    # block 1: pred [1,2,3] vs [1,2,10]: Pearson 9/sqrt(2 * 146/3), Spearman 1; block 2: [1,2,3] vs [1,3,2]: 1/2
    f = _frame(["A"], 6, [1, 2, 3, 1, 2, 3], [1, 2, 10, 1, 3, 2])
    m = rank_metrics(f, ic_window=3)
    assert m["ic"] == pytest.approx((9 / math.sqrt(2 * 146 / 3) + 0.5) / 2)
    assert m["rank_ic"] == pytest.approx((1 + 0.5) / 2)
    assert ic_series(f, ic_window=3)["date"].to_list() == [D0, D0 + timedelta(days=3)]


def test_a_constant_forecast_has_no_ic_and_a_short_last_block_is_dropped():
    f = _frame(["A"], 6, [0.001] * 6, [1, 2, 3, 4, 5, 6])
    assert math.isnan(point_metrics(f)["ic"])
    g = _frame(["A"], 7, [1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6, 0])
    assert ic_series(g, ic_window=6).height == 1  # the 1-session remainder has no meaningful correlation


def test_cross_sectional_ic_ignores_a_per_date_shift_and_scale():
    rng = np.random.default_rng(0)
    f = _frame(list("ABCDE"), 40, rng.normal(size=200), rng.normal(size=200))
    g = f.with_columns(pred=pl.col("pred") * (1 + pl.col("date").dt.day()) + pl.col("date").dt.day())
    assert rank_metrics(f) == pytest.approx(rank_metrics(g))


def _sign_book():
    R = np.array([0.01, -0.02, 0.03, 0.01])  # simple returns
    return _frame(["A"], 4, [1, -1, -1, 1], np.log1p(R)), R


def test_sign_backtest_by_hand():
    f, R = _sign_book()
    d = daily_returns(f, cost_bps=10)
    assert np.allclose(d["gross"], [0.01, 0.02, -0.03, 0.01])
    assert np.allclose(d["turnover"], [1, 2, 0, 2])  # enter long, flip, hold, flip
    net = np.array([0.009, 0.018, -0.03, 0.008])
    assert np.allclose(d["net"], net) and np.allclose(d["benchmark"], R)
    m = strategy_metrics(f, cost_bps=10)
    assert m["ann_return"] == pytest.approx(net.mean() * 252)
    assert m["sharpe"] == pytest.approx(net.mean() / net.std(ddof=1) * math.sqrt(252))
    assert m["info_ratio"] == pytest.approx((net - R).mean() / (net - R).std(ddof=1) * math.sqrt(252))
    assert m["max_drawdown"] == pytest.approx(-0.03) and m["turnover"] == pytest.approx(1.25)


def test_horizon_splits_the_book_into_staggered_sub_books():
    f, _ = _sign_book()
    one, three = daily_returns(f, cost_bps=10), daily_returns(f, cost_bps=10, horizon=3)
    for col in ["gross", "turnover", "net"]:
        assert np.allclose(three[col], one[col] / 3)


def test_max_drawdown_by_hand():
    assert max_drawdown(np.array([0.1, 0.1, 0.2])) == 0.0
    assert max_drawdown(np.array([0.5, -0.5, 0.2])) == pytest.approx(-0.5)
    assert max_drawdown(np.array([-0.1, -0.1])) == pytest.approx(0.9 * 0.9 - 1)


def test_topk_is_long_top_short_bottom_and_neutral():
    f = _frame(list("ABCD"), 2, [0.3, -0.1, 0.2, -0.4, 1, 1, 1, 1], np.zeros(8))
    w = weights(f, strategy="topk", top_k=1).to_list()
    assert w[:4] == [0.5, 0.0, 0.0, -0.5]
    assert w[4:] == [0.0] * 4  # every forecast equal: no view, no position
    w2 = weights(f, strategy="topk", top_k=5).to_list()  # k shrinks to n // 2
    assert w2[:4] == [0.25, -0.25, 0.25, -0.25]


@pytest.mark.parametrize("strategy", ["sign", "topk"])
def test_costs_lower_returns_in_proportion_to_turnover(strategy):
    rng = np.random.default_rng(1)
    f = _frame(list("ABCDEF"), 300, rng.normal(size=1800), rng.normal(0, 0.01, size=1800))
    free = strategy_metrics(f, strategy=strategy, top_k=2, cost_bps=0)
    assert free["turnover"] > 0.1
    for bps in [1, 5, 50]:
        paid = strategy_metrics(f, strategy=strategy, top_k=2, cost_bps=bps)
        assert paid["turnover"] == free["turnover"]
        assert free["ann_return"] - paid["ann_return"] == pytest.approx(bps / 1e4 * free["turnover"] * 252)
    slow = f.with_columns(pred=pl.col("pred").mean().over("ticker"))  # the same book every day
    assert strategy_metrics(slow, strategy=strategy, top_k=2, cost_bps=0)["turnover"] < free["turnover"] / 50


def test_diebold_mariano_by_hand_and_symmetric():
    stat, p = diebold_mariano(np.array([0.0, 0.0, 0.0]), np.array([1.0, 2.0, 3.0]))
    # d = [-1, -2, -3]: mean -2, var(mean) = (2/3)/3, HLN factor sqrt(2/3) -> -2 * sqrt(3)
    assert stat == pytest.approx(-2 * math.sqrt(3)) and p == pytest.approx(st.t.cdf(-2 * math.sqrt(3), df=2))
    rng = np.random.default_rng(2)
    a, b = rng.chisquare(1, 500), rng.chisquare(1, 500) * 1.5
    assert diebold_mariano(a, b)[1] < 0.01 and diebold_mariano(a, b)[1] + diebold_mariano(b, a)[1] == pytest.approx(1)
    assert all(math.isnan(v) for v in diebold_mariano(a, a))


def test_block_bootstrap_resamples_contiguous_circular_blocks():
    x = np.arange(20.0)
    rows = block_bootstrap(x, lambda m: m, n_boot=50, block=5, seed=0)  # (50, 20) resampled series
    steps = (np.diff(rows.reshape(50, 4, 5), axis=2) % 20)
    assert rows.shape == (50, 20) and np.all(steps == 1)


def test_bootstrap_interval_covers_the_truth_and_is_degenerate_for_a_constant():
    rng = np.random.default_rng(3)
    low, high = confidence_interval(rng.normal(0.1, 1, 2000), mean_stat, level=0.95, n_boot=500)
    assert low < 0.1 < high and low > 0
    assert confidence_interval(np.full(100, 0.2), mean_stat) == pytest.approx((0.2, 0.2))
    assert all(math.isnan(v) for v in confidence_interval(np.zeros(100), sharpe_stat))


@pytest.mark.parametrize("per_session, noted", [(None, False), (1.0, False), (2.0, True), (4.0, True), (5.0, False)])
def test_a_test_split_of_two_tickers_per_session_gets_a_note_on_its_ic(per_session, noted):
    """Of two tickers a session's cross-sectional IC is +1 or -1: train's table says so under it."""
    from forecast.evaluation.report import point_report

    metrics = dict(mse=1.0, mae=1.0, dir_acc=0.5, ic=0.1, rank_ic=0.1, icir=0.1)
    text = point_report({"model": metrics, "zero": {**metrics, "mse": 2.0}}, per_session)
    assert ("tickers per test session" in text) == noted, text


def test_the_ic_of_two_tickers_per_session_is_plus_or_minus_one():
    rng = np.random.default_rng(0)
    days = pl.date_range(date(2020, 1, 1), date(2020, 3, 1), eager=True)
    frame = pl.DataFrame(dict(date=pl.concat([days, days]), ticker=["A"] * len(days) + ["B"] * len(days),
                              pred=rng.standard_normal(2 * len(days)), realised=rng.standard_normal(2 * len(days))))
    assert set(ic_series(frame)["ic"].round(9).to_list()) <= {-1.0, 1.0}
