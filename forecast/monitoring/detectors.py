"""Performance drift: river's Page-Hinkley test on the standardised per-session rank IC
(realised.standardised: unit variance under a constant relation, whatever the number of tickers),
one-sided (`mode="down"`: a fall of the IC), with a threshold calibrated for a false-alarm rate.

Calibration (`calibrate`): the stream under no change is a reference series shuffled (a permutation
destroys any change point but keeps the marginal distribution: fat tails, the model's own IC level);
the threshold is the smallest one on a grid at which `streams` shuffled streams of `length` sessions
raise at most `rate` false alarms per session. The reference is the validation-period series of a
trained model, or a stationary N(0, 1) series (what the standardised IC is under no change);
experiments/monitoring/ records both, and conf/monitor.yaml holds the larger threshold.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from river import drift


@dataclass(frozen=True)
class PageHinkley:
    """The detector's settings: `delta` (in standard deviations of the standardised IC) is the fall
    tolerated as noise, `threshold` the cumulated fall that raises an alarm; no alarm before
    `min_instances` sessions."""
    delta: float = 0.5
    threshold: float = 12.0
    min_instances: int = 30
    alpha: float = 1.0 - 1e-4

    def alarms(self, z: np.ndarray) -> list[tuple[int, float]]:
        """(index, test statistic) of each alarm over the series `z` (S,); the test restarts after each."""
        ph = drift.PageHinkley(min_instances=self.min_instances, delta=self.delta, threshold=self.threshold,
                               alpha=self.alpha, mode="down")
        out = []
        for i, x in enumerate(np.asarray(z, dtype=np.float64)):
            if not np.isfinite(x):
                continue
            ph.update(float(x))
            if ph.drift_detected:
                out.append((i, float(ph._max_decrease - ph._sum_decrease)))  # river 0.26's statistic
        return out


def false_alarm_rate(detector: PageHinkley, reference: np.ndarray, streams: int, length: int, seed: int) -> float:
    """Alarms per session over `streams` shuffles of `reference` (resampled when shorter than `length`)."""
    rng = np.random.default_rng(seed)
    ref = np.asarray(reference, dtype=np.float64)
    ref = ref[np.isfinite(ref)]
    alarms = 0
    for _ in range(streams):
        stream = rng.permutation(ref)[:length] if len(ref) >= length else rng.choice(ref, length)
        alarms += len(detector.alarms(stream))
    return alarms / (streams * length)


def calibrate(reference: np.ndarray, rate: float = 1e-4, delta: float = 0.5, min_instances: int = 30,
              grid: np.ndarray | None = None, streams: int = 200, length: int = 1000, seed: int = 0) -> dict:
    """The smallest threshold of `grid` whose false-alarm rate on shuffles of `reference` is <= `rate`."""
    grid = np.arange(4.0, 40.5, 0.5) if grid is None else grid
    lo, hi = 0, len(grid) - 1
    rates = {}
    while lo < hi:  # the rate falls as the threshold rises: bisect
        mid = (lo + hi) // 2
        rates[float(grid[mid])] = false_alarm_rate(PageHinkley(delta, float(grid[mid]), min_instances),
                                                   reference, streams, length, seed)
        lo, hi = (lo, mid) if rates[float(grid[mid])] <= rate else (mid + 1, hi)
    return dict(threshold=float(grid[lo]), delta=delta, min_instances=min_instances, rate=rate,
                streams=streams, length=length, rates=dict(sorted(rates.items())))
