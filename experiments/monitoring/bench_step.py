"""Seconds of monitor's computations for 500 tickers and 50 input features (no I/O: the frames are
built in memory), written to bench_step.json beside this file.

- step: one new session, as a daily run adds it: its IC / rank IC / hit rate / strategy return,
  the Page-Hinkley update, PSI of its 20-session window on 50 features, KS where PSI is high.
- recompute: what the command does each run (it recomputes from the first stored session so that it
  is idempotent): the same over `history` sessions, plus fitting the training-period bins.

    python experiments/monitoring/bench_step.py [--tickers 500] [--features 50] [--history 250]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import polars as pl

from forecast.monitoring import detectors, drift, realised


def frames(tickers: int, features: int, history: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    days = [dt.date(2022, 1, 3) + dt.timedelta(days=i) for i in range(history)]
    n = tickers * history
    r = 0.01 * rng.standard_normal(n)
    f = pl.DataFrame(dict(ticker=np.tile([f"T{i:04d}" for i in range(tickers)], history),
                          asof=pl.Series(days).gather(np.repeat(np.arange(history), tickers)),
                          forecast=0.3 * r + 0.01 * rng.standard_normal(n), realised=r))
    train = rng.standard_normal((tickers * 250, features))  # (N_train, F)
    now = rng.standard_normal((n, features))
    now[n // 2:, 0] += 1.0  # one drifting feature: KS runs there
    return f, train, now, np.repeat(np.arange(history), tickers)


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tickers", type=int, default=500)
    p.add_argument("--features", type=int, default=50)
    p.add_argument("--history", type=int, default=250)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    f, train, now, session = frames(a.tickers, a.features, a.history)
    names = [f"f{i}" for i in range(a.features)]
    ref = drift.fit(train, names)
    limit = np.full(a.features, 0.25)
    ph = detectors.PageHinkley()
    window = 20
    last = session >= a.history - window  # the rows of the latest 20-session window

    def step():
        scores = realised.session_scores(f.filter(pl.col("asof") == f["asof"].max()), 20, 5.0, 1)
        ph.alarms(realised.standardised(scores))
        drift.drifting(ref, now[last], session[last] - (a.history - window), window, window, limit, 1e-3, 10)

    def recompute():
        fitted = drift.fit(train, names)
        scores = realised.session_scores(f, 20, 5.0, 1)
        ph.alarms(realised.standardised(scores))
        drift.drifting(fitted, now, session, a.history, window, limit, 1e-3, 10)

    out = dict(command="python experiments/monitoring/bench_step.py " + " ".join(
        f"--{k} {v}" for k, v in vars(a).items()), tickers=a.tickers, features=a.features, history=a.history,
        step_seconds=timed(step, a.repeats), recompute_seconds=timed(recompute, a.repeats))
    print(json.dumps(out))
    (Path(__file__).resolve().parent / "bench_step.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
