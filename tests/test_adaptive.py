"""Adaptive quantiles (forecast/evaluation/adaptive.py): causal, the recursion equal to the closed
form predict uses, and coverage that recovers where a fixed calibration is wrong."""
import numpy as np
import polars as pl
import pytest

from forecast.evaluation import adaptive

TAUS = [0.1, 0.5, 0.9]
Z90 = 1.2815515655446004  # the standard normal's 0.9 quantile


def static(n: int, sigma: float = 1.0) -> np.ndarray:
    """(n, 3) the 10/50/90% quantiles of N(0, sigma^2)."""
    return np.tile([-Z90 * sigma, 0.0, Z90 * sigma], (n, 1))


def covered(q: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((y >= q[:, 0]) & (y <= q[:, 2])))


@pytest.mark.parametrize("horizon", [1, 3])
def test_the_recursion_is_the_sum_over_what_was_served_before(horizon):
    rng = np.random.default_rng(0)
    y = rng.standard_t(4, 300) * 0.01
    q = static(300, 0.008) + rng.normal(0, 1e-3, (300, 1))
    out = adaptive.adapt(q, y, TAUS, 0.1, horizon)
    for i in (0, 1, horizon, 57, 299):
        known = max(0, i - horizon + 1)  # positions <= i - horizon
        th = adaptive.theta(out[:known], y[:known], TAUS, 0.1)
        assert np.allclose(out[i], adaptive.widen(q[i:i + 1], th, TAUS)[0], rtol=0, atol=1e-15), i


def test_an_outcome_moves_no_quantile_before_it_is_known():
    rng = np.random.default_rng(1)
    y, q = rng.normal(0, 1, 200), static(200)
    base = adaptive.adapt(q, y, TAUS, 0.1, 2)
    for i in (0, 50, 150):
        moved = y.copy()
        moved[i] = 40.0  # a miss where there was none, or a bigger one
        got = adaptive.adapt(q, moved, TAUS, 0.1, 2)
        assert np.array_equal(got[:i + 2], base[:i + 2]), i  # known at i + 2 at the earliest
        assert not np.array_equal(got[i + 2:], base[i + 2:]), i


def test_coverage_recovers_when_the_volatility_doubles():
    """Calibrated on a calm regime, a fixed interval covers about half of a turbulent one; adapted, the
    coverage of the whole period is within 3 points of 80%, and the median never moves."""
    rng = np.random.default_rng(2)
    sigma = np.r_[np.ones(300), np.full(1700, 2.0)]
    y = rng.normal(0, 1, 2000) * sigma
    q = static(2000)
    out = adaptive.adapt(q, y, TAUS, adaptive.GAMMA, 1)
    assert covered(q, y) < 0.55
    assert abs(covered(out, y) - 0.8) < 0.03
    assert np.array_equal(out[:, 1], q[:, 1]) and (out[:, 0] <= out[:, 1]).all() and (out[:, 1] <= out[:, 2]).all()
    assert np.array_equal(adaptive.adapt(q, y, TAUS, 0.0, 1), q)  # gamma 0: unchanged


def test_a_frame_adapts_each_ticker_on_its_own_and_keeps_its_row_order():
    rng = np.random.default_rng(3)
    n = 120
    days = pl.date_range(pl.date(2020, 1, 1), pl.date(2020, 1, 1) + pl.duration(days=n - 1), eager=True)
    parts = []
    for t, s in (("A", 1.0), ("B", 3.0)):
        q = static(n)
        parts.append(pl.DataFrame(dict(ticker=[t] * n, date=days, realised=rng.normal(0, s, n),
                                       q10=q[:, 0], q50=q[:, 1], q90=q[:, 2])))
    frame = pl.concat(parts).sample(fraction=1.0, shuffle=True, seed=0)  # rows in no order
    got = adaptive.adapt_frame(frame, TAUS, 0.1, 1)
    assert got.select("ticker", "date", "realised").equals(frame.select("ticker", "date", "realised"))
    for t in ("A", "B"):
        one = frame.filter(pl.col("ticker") == t).sort("date")
        want = adaptive.adapt(one.select("q10", "q50", "q90").to_numpy(), one["realised"].to_numpy(), TAUS, 0.1, 1)
        assert np.allclose(got.filter(pl.col("ticker") == t).sort("date").select("q10", "q50", "q90").to_numpy(), want)


@pytest.mark.parametrize("horizon", [1, 3])
def test_predict_served_history_gives_the_recursion_of_evaluate(tmp_path, horizon):
    """Session by session, what predict serves (theta from the rows served before) is the recursion
    train and evaluate score; serving a session again replaces its row and changes nothing."""
    import datetime as dt

    from forecast.inference import predictions
    from forecast.inference.served_misses import ServedMisses

    rng = np.random.default_rng(4)
    n = 80
    y, q = rng.normal(0, 1.5, n), static(n)
    engine = predictions.connect(f"sqlite:///{tmp_path}/p.db")  # empty: all history is served here
    served = ServedMisses(engine, "m", "1", horizon, TAUS, 0.1, str(tmp_path / "store"), dt.date(2030, 1, 1))
    days = [dt.date(2020, 1, 1) + dt.timedelta(days=i) for i in range(n)]
    got = []
    for i, day in enumerate(days):
        for _ in range(2 if i % 10 == 0 else 1):  # some sessions served twice
            qi = served.widen(day, ["T"], q[i:i + 1])
            served.add(day, ["T"], qi, y[i:i + 1])
        got.append(qi[0])
    assert np.allclose(np.array(got), adaptive.adapt(q, y, TAUS, 0.1, horizon), rtol=0, atol=1e-12)
