"""Forecast-quality pieces, fast: validation shrinkage (never worse on validation than the raw or
the zero forecast), the quantile head (never crosses, learns a known distribution's quantiles),
the validation-fitted quantile spread (coverage of a known distribution), the trailing historical
quantiles (causal: a future return never changes them)."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from forecast.evaluation.calibration import anchor_of, drift_factor, fit_scale
from forecast.evaluation.quantiles import apply_spread, coverage, fit_spread, pinball, trailing_quantiles
from forecast.model.heads import QuantileHead

TAUS = [0.1, 0.5, 0.9]


def _mse(b: float, f: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((b * f - y) ** 2))


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 10_000), signal=st.floats(-2.0, 2.0), n=st.integers(3, 400),
       method=st.sampled_from(["slope", "shrink"]))
def test_shrinkage_never_increases_validation_mse(seed, signal, n, method):
    rng = np.random.default_rng(seed)
    f = rng.normal(size=n) * rng.uniform(0.01, 3.0)
    y = signal * f + rng.normal(size=n)
    b = fit_scale(f, y, method)
    assert 0.0 <= b <= 1.0
    assert _mse(b, f, y) <= _mse(1.0, f, y) + 1e-12  # never worse than the raw forecast
    assert _mse(b, f, y) <= _mse(0.0, f, y) + 1e-12  # nor than the zero forecast


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 10_000), drift=st.floats(-0.5, 0.5))
def test_shrinkage_towards_the_mean_never_increases_validation_mse(seed, drift):
    """shrink_mean: m + b (f - m), b fitted on the centred f - m, y - m: no worse than f or than m."""
    rng = np.random.default_rng(seed)
    f, y = rng.normal(size=252) + drift, rng.normal(size=252) + drift
    m = drift + rng.normal() * 0.1  # a training-period mean
    b = fit_scale(f - m, y - m, "shrink_mean")
    mse = float(np.mean((m + b * (f - m) - y) ** 2))
    assert mse <= float(np.mean((f - y) ** 2)) + 1e-12
    assert mse <= float(np.mean((m - y) ** 2)) + 1e-12


def test_the_drift_is_kept_when_clear_and_dropped_when_noise():
    """shrink_drift's anchor m max(0, 1 - 1/t^2): near m for a drift many standard errors from zero,
    0 when the mean is within one, never of the other sign, and never larger than m."""
    rng = np.random.default_rng(0)
    assert drift_factor(0.01 + rng.normal(size=2500) * 0.01) == pytest.approx(1.0, abs=0.01)  # t ~ 50
    noise = [drift_factor(rng.normal(size=2500) * 0.01) for _ in range(200)]
    assert np.mean([f == 0.0 for f in noise]) > 0.6  # |t| < 1 in ~68% of draws
    assert all(0.0 <= f < 1.0 for f in noise)
    equity = 0.0004 + rng.normal(size=2500) * 0.012  # ten years of an index: t ~ 1.7
    assert 0.0 < drift_factor(equity) < 0.9
    assert drift_factor(np.array([0.01, 0.01])) == 0.0  # too few sessions: no evidence


def test_the_drift_is_measured_per_date_across_tickers():
    """With many tickers the t-statistic is over the per-date mean, not over every row: tickers that
    move together on a date are one observation, so the evidence does not grow with their number."""
    rng = np.random.default_rng(1)
    dates = pl.date_range(pl.date(2000, 1, 1), pl.date(2009, 12, 31), eager=True)[:2500]
    market = 0.0005 + rng.normal(size=2500) * 0.012  # (D,) t ~ 1.3 over dates; ~9 over the 125,000 rows
    frame = pl.concat([pl.DataFrame(dict(date=dates, target=market + rng.normal(size=2500) * 1e-4,
                                         split=["train"] * 2500)) for _ in range(50)])

    class Data:
        target_mean = float(frame["target"].mean())

    Data.frame = frame
    factor = anchor_of(Data, "shrink_drift") / Data.target_mean
    assert factor == pytest.approx(drift_factor(market), abs=0.01) and factor < 0.6
    assert drift_factor(frame["target"].to_numpy()) > 0.95  # what pooling the rows would have claimed
    assert anchor_of(Data, "shrink_mean") == Data.target_mean and anchor_of(Data, "shrink") == 0.0


def test_shrinkage_keeps_a_clear_signal_and_drops_noise():
    rng = np.random.default_rng(0)
    f = rng.normal(size=2000)
    assert fit_scale(f, 0.5 * f + rng.normal(size=2000) * 0.5, "shrink") == pytest.approx(0.5, abs=0.05)
    zeros = [fit_scale(f[:252], rng.normal(size=252), "shrink") == 0.0 for _ in range(200)]
    assert np.mean(zeros) > 0.6  # pure noise: b = 0 unless |t| > 1 with the right sign (~16% of draws)
    assert fit_scale(f, rng.normal(size=2000), "none") == 1.0


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.01, 100.0))
def test_quantile_head_never_crosses(seed, scale):
    torch.manual_seed(seed)
    head = QuantileHead(d_model=8, quantiles=(0.9, 0.1, 0.5, 0.25))  # given out of order
    q = head(torch.randn(64, 5, 8) * scale)  # (B, Q)
    assert q.shape == (64, 4)
    assert head.taus == [0.1, 0.25, 0.5, 0.9]
    assert torch.all(q[:, 1:] >= q[:, :-1])
    assert torch.equal(head.point(q), q[:, 2])


def test_quantile_head_rejects_levels_without_the_median():
    with pytest.raises(ValueError, match="0.5"):
        QuantileHead(d_model=4, quantiles=(0.1, 0.9))


def test_quantile_head_learns_the_quantiles_of_a_known_distribution():
    """Pinball loss on y = 2 * scale(x) * e, e ~ N(0, 1): the head's quantiles reach N's at each level."""
    torch.manual_seed(0)
    head = QuantileHead(d_model=4)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(400):
        h = torch.rand(512, 1, 4) + 0.5  # (B, L, D) a positive 'volatility' input
        y = 2 * h[:, -1, 0] * torch.randn(512)
        opt.zero_grad()
        head.loss(head(h), y).backward()
        opt.step()
    h = torch.full((1, 1, 4), 1.0)
    q = head(h)[0].detach()
    z = torch.distributions.Normal(0, 1).icdf(torch.tensor(TAUS)) * 2.0
    assert torch.allclose(q, z, atol=0.25), (q, z)


def test_pinball_is_minimised_by_the_true_quantile():
    y = np.random.default_rng(1).standard_t(4, size=20_000)
    for tau in TAUS:
        true = np.quantile(y, tau)
        assert pinball(np.full_like(y, true), y, tau) < pinball(np.full_like(y, true + 0.2), y, tau)
        assert pinball(np.full_like(y, true), y, tau) < pinball(np.full_like(y, true - 0.2), y, tau)


def test_spread_gives_the_nominal_coverage_of_a_known_distribution():
    """Quantiles too narrow by 3x (a model that under-states volatility) on heteroskedastic returns:
    the spread fitted on one sample gives ~80% coverage on a fresh one, with the levels in order."""
    rng = np.random.default_rng(2)
    z = 1.2815515655446004  # N(0, 1)'s 0.9 quantile

    def sample(n):
        sigma = rng.uniform(0.5, 3.0, size=n)
        q = np.stack([-z * sigma / 3, np.zeros(n), z * sigma / 3], axis=1)  # (N, 3) too narrow
        return q, sigma * rng.normal(size=n)

    q_val, y_val = sample(5000)
    spread = fit_spread(q_val, y_val, TAUS)
    assert spread == pytest.approx([3.0, 1.0, 3.0], rel=0.1)
    q, y = sample(20_000)
    before = coverage(q[:, 0], q[:, 2], y)
    fixed = apply_spread(q, spread, TAUS)
    assert before < 0.4
    assert abs(coverage(fixed[:, 0], fixed[:, 2], y) - 0.8) < 0.02
    assert np.all(np.diff(fixed, axis=1) >= 0)


def test_trailing_quantiles_are_causal():
    """Changing any return realised after anchor t (targets of anchors > t - horizon) leaves the
    trailing quantiles at t and before unchanged."""
    rng = np.random.default_rng(3)
    n, horizon, t = 400, 2, 250
    frame = pl.DataFrame(dict(ticker=["A"] * n, date=pl.date_range(pl.date(2000, 1, 1), pl.date(2001, 2, 3), eager=True)
                              [:n], target=rng.normal(size=n)))
    before = trailing_quantiles(frame, TAUS, horizon, window=100)
    target = frame["target"].to_numpy().copy()
    target[t - horizon + 1:] += 100.0  # every label not yet realised at t
    after = trailing_quantiles(frame.with_columns(target=pl.Series(target)), TAUS, horizon, window=100)
    assert before[: t + 1].equals(after[: t + 1])
    assert not before[t + 1:].equals(after[t + 1:])
    assert before["hq10"][:50].is_null().all()  # fewer than window // 2 known returns
    assert before["hq10"][t] == pytest.approx(np.quantile(target[t - horizon - 99: t - horizon + 1], 0.1), abs=0.1)


def test_the_config_schema_accepts_exactly_the_calibration_methods():
    """`calibrate` is checked by the light config schema (no numpy or polars at start-up), which
    spells the methods out: it must name the same ones calibration.py implements."""
    from typing import get_args

    from forecast.config.commands import Train
    from forecast.evaluation.calibration import METHODS

    assert get_args(Train.model_fields["calibrate"].annotation) == METHODS
