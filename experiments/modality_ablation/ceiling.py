"""How much of the oracle can any model learn from this much data? Fit the true functional forms by
least squares on the training sessions, as if the model knew them, and score on the test sessions:

- price and news: one pooled coefficient each on -(r[t-1, i] - mean_j r[t-1, j]) and on the
  headline's sentiment (given, not read from text);
- exogenous and calendar: one loading per ticker on LEAD[t-1] and on the calendar profile g(t),
  fitted on the residual of the pooled fit.

The oracle knows the loadings; this estimator has to estimate 2 x 50 of them from the ~975 training
sessions, as a model must. Labels are demeaned per date (as `cs_*` labels). The split is by session
index (65% / 15% / 20%), close to the runner's but without its window and purge, so the numbers are
approximate.
`--split val` scores the validation sessions instead, and `--calendar S` / `--days T` / `--seed K`
re-simulate the market with another calendar strength, length or seed: that is how the market's
calendar strength was chosen (on validation). The test scores are a diagnostic, never used to choose.

    python experiments/modality_ablation/ceiling.py [--split val] [--calendar 0.05] [--days 1500] [--seed 0]
"""
from __future__ import annotations

import argparse

import numpy as np
from run import MARKET

from data_pipelines.synthetic import COMPONENTS, calendar_signal, ic_stats, session_grid, simulate


def demean(a: np.ndarray) -> np.ndarray:
    return a - a.mean(1, keepdims=True)  # (T, N), per date


def fit(y: np.ndarray, shared: np.ndarray, per_ticker: list[np.ndarray], train: np.ndarray) -> np.ndarray:
    """Forecasts (T, N): pooled least squares on `shared` (T, N, S), then per ticker on `per_ticker`
    (each (T, N)) fitted to the pooled residual; all fitted on the rows `train`."""
    coef = np.linalg.lstsq(shared[train].reshape(-1, shared.shape[-1]), y[train].ravel(), rcond=None)[0]
    pred = shared @ coef
    resid = y - pred
    for i in range(y.shape[1]):
        X = np.stack([x[:, i] for x in per_ticker] + [np.ones(len(y))], 1)  # (T, P + 1)
        c = np.linalg.lstsq(X[train], resid[train, i], rcond=None)[0]
        pred[:, i] += X[:, :-1] @ c[:-1]
    return pred


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--split", choices=["val", "test"], default="test")
    parser.add_argument("--calendar", type=float, default=MARKET["strength"]["calendar"])
    parser.add_argument("--days", type=int, default=MARKET["days"])
    parser.add_argument("--seed", type=int, default=MARKET["seed"])
    args = parser.parse_args()
    days = session_grid(args.days, MARKET["end"])
    strength = dict(MARKET["strength"], calendar=args.calendar)
    sim = simulate(MARKET["tickers"], days, args.seed, strength, MARKET["news_rate"])
    r, T = sim["r"], len(days)
    t = np.arange(10, T)  # target sessions
    train = t < int(0.65 * T)
    scored = t >= int(0.80 * T) if args.split == "test" else ~train & (t < int(0.80 * T))
    y = demean(r[t])
    shared = np.stack([demean(-(r[t - 1] - r[t - 1].mean(1, keepdims=True))),
                       demean(sim["sentiment"][t - 1].astype(float))], -1)  # (T', N, 2)
    lead = np.repeat(sim["lead"][t - 1, None], r.shape[1], 1)
    cal = np.repeat(calendar_signal(days)[t, None], r.shape[1], 1)
    oracle = sum(sim["comp"][k][t] for k in COMPONENTS)
    rows = {"oracle (true components)": oracle,
            "fitted: price, news, exogenous, calendar": fit(y, shared, [lead, cal], train),
            "fitted without calendar": fit(y, shared, [lead], train),
            "fitted without exogenous": fit(y, shared, [cal], train),
            "fitted: price and news only": fit(y, shared, [], train)}
    print(f"| forecast | {args.split} IC |\n|---|---|")
    for name, pred in rows.items():
        print(f"| {name} | {ic_stats(pred[scored], r[t][scored])['ic']:.4f} |")


if __name__ == "__main__":
    main()
