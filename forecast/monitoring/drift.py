"""Input drift: each input feature over the `window` sessions up to a session, against the model's
training period. PSI on `bins` quantile bins fitted on the training values, confirmed by scipy's
two-sample Kolmogorov-Smirnov test; a feature drifts when PSI > `psi` and the KS p-value < `ks_p`.

The features are the scale-free ones the model sees (log return, gap, intraday, range, volume change;
each exogenous series z-scored on the training period, and its change), never raw price levels, so a
market that merely moves does not drift. PSI and KS are invariant to the model's affine normalisation,
so the raw feature values are compared. Counts per (session, feature, bin) are computed once and summed
over a sliding window, so every session of a long history costs one cumulative sum; KS runs only where
PSI is above its threshold.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import ks_2samp

EPS = 1e-4  # the smallest bin share (an empty bin would make PSI infinite)
KS_SAMPLE = 20_000  # training values kept per feature for KS


@dataclass
class Reference:
    """Per feature: the inner quantile-bin edges and the expected share of each bin on the training
    period, and a sample of the training values (sorted) for KS."""
    names: list[str]
    edges: list[np.ndarray]  # each (B_f - 1,)
    expected: list[np.ndarray]  # each (B_f,)
    sample: list[np.ndarray]


def fit(values: np.ndarray, names: list[str], bins: int = 10, tail: float = 0.005, seed: int = 0) -> Reference:
    """Bins and sample from the training rows `values` (N, F); NaN values are left out. Besides the
    `bins` quantile bins, two tail bins hold the training values beyond the `tail` and 1 - `tail`
    quantiles: a window beyond the training range (a level shift) then differs from one that merely
    sits in an outer decile (the wandering of an autocorrelated series), which plain decile bins
    cannot tell apart."""
    rng = np.random.default_rng(seed)
    edges, expected, sample = [], [], []
    qs = np.r_[tail, np.linspace(0, 1, bins + 1)[1:-1], 1 - tail] if tail > 0 else np.linspace(0, 1, bins + 1)[1:-1]
    for f in range(values.shape[1]):
        v = values[:, f][np.isfinite(values[:, f])]
        e = np.unique(np.quantile(v, qs)) if len(v) else np.zeros(0)
        edges.append(e)
        expected.append(np.maximum(np.bincount(np.searchsorted(e, v, side="right"), minlength=len(e) + 1)
                                   / max(len(v), 1), EPS))
        sample.append(np.sort(rng.choice(v, KS_SAMPLE, replace=False) if len(v) > KS_SAMPLE else v))
    return Reference(names, edges, expected, sample)


def window_counts(ref: Reference, values: np.ndarray, session: np.ndarray, sessions: int,
                  window: int) -> list[np.ndarray]:
    """Per feature (S, B_f): the bin counts of the rows of the `window` sessions up to each session;
    `session` (N,) is each row's session index in 0..S-1."""
    out = []
    for f, e in enumerate(ref.edges):
        ok = np.isfinite(values[:, f])
        b = np.searchsorted(e, values[ok, f], side="right")  # (n,)
        counts = np.zeros((sessions, len(e) + 1))
        np.add.at(counts, (session[ok], b), 1.0)  # (S, B)
        csum = np.cumsum(counts, axis=0)
        out.append(csum - np.vstack([np.zeros((window, len(e) + 1)), csum[:-window]])[:sessions])
    return out


def psi(expected: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(S,) population stability index of each row of counts (S, B) against the shares `expected` (B,)."""
    actual = np.maximum(counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0), EPS)
    return ((actual - expected) * np.log(actual / expected)).sum(axis=1)


def window_psi(ref: Reference, values: np.ndarray, session: np.ndarray, sessions: int, window: int,
               min_rows: int) -> np.ndarray:
    """(S, F) PSI of the window up to each session (NaN where it holds fewer than `window` sessions
    or `min_rows` values)."""
    out = np.full((sessions, len(ref.names)), np.nan)
    for f, counts in enumerate(window_counts(ref, values, session, sessions, window)):
        full = (counts.sum(axis=1) >= min_rows) & (np.arange(sessions) >= window - 1)
        out[full, f] = psi(ref.expected[f], counts[full])
    return out


def drifting(ref: Reference, values: np.ndarray, session: np.ndarray, sessions: int, window: int,
             psi_max: np.ndarray, ks_p: float, min_rows: int) -> dict[str, list[tuple[int, float, float]]]:
    """Per feature, (session index, PSI, KS p) of each session whose window drifts: PSI above the
    feature's `psi_max` (F,) and KS p-value below `ks_p`."""
    scores = window_psi(ref, values, session, sessions, window, min_rows)  # (S, F)
    out = {}
    for f, name in enumerate(ref.names):
        hits = []
        for s in np.flatnonzero(np.nan_to_num(scores[:, f]) > psi_max[f]):
            v = values[(session > s - window) & (session <= s), f]
            p = float(ks_2samp(v[np.isfinite(v)], ref.sample[f]).pvalue)
            if p < ks_p:
                hits.append((int(s), float(scores[s, f]), p))
        out[name] = hits
    return out


def limits(ref: Reference, values: np.ndarray, session: np.ndarray, sessions: int, window: int,
           min_rows: int, floor: float) -> np.ndarray:
    """(F,) the largest PSI of each feature's windows over a stretch of no drift (the model's training
    and validation periods), and at least `floor`: the natural wandering of a series (an
    autocorrelated one moves far in 20 sessions, so its windows look unlike the whole) is not drift."""
    worst = np.nanmax(window_psi(ref, values, session, sessions, window, min_rows), axis=0, initial=0.0)  # (F,)
    return np.maximum(np.nan_to_num(worst), floor)


def episodes(hits: list[tuple]) -> list[tuple]:
    """The first session of each run of consecutive drifting sessions: one alert per episode."""
    return [h for i, h in enumerate(hits) if i == 0 or hits[i - 1][0] != h[0] - 1]


def mean_shift(train: np.ndarray, values: np.ndarray, session: np.ndarray, sessions: int, window: int) -> np.ndarray:
    """(S, F) the z-score of each window's mean against the training mean, for series with one value
    per session (exogenous): the standard error of a `window`-session mean of an autocorrelated series
    is std / sqrt(window) x sqrt((1 + rho) / (1 - rho)), rho its lag-1 autocorrelation on the training
    period (rows in date order). The level of such a series wanders: PSI of a short window against the
    whole training period cannot tell a wandering from a shift, this can."""
    out = np.full((sessions, train.shape[1]), np.nan)
    for f in range(train.shape[1]):
        t = train[:, f][np.isfinite(train[:, f])]
        if len(t) < 10 or t.std() == 0:
            continue
        rho = float(np.clip(np.corrcoef(t[:-1], t[1:])[0, 1], 0.0, 0.99))
        ok = np.isfinite(values[:, f])
        total, count = np.zeros(sessions), np.zeros(sessions)
        np.add.at(total, session[ok], values[ok, f])
        np.add.at(count, session[ok], 1.0)
        ct, cc = np.cumsum(total), np.cumsum(count)
        wt = ct - np.r_[np.zeros(window), ct[:-window]][:sessions]
        wc = cc - np.r_[np.zeros(window), cc[:-window]][:sessions]
        se = t.std() / np.sqrt(np.maximum(wc, 1.0)) * np.sqrt((1 + rho) / (1 - rho))
        z = (wt / np.maximum(wc, 1.0) - t.mean()) / se
        out[:, f] = np.where((wc >= window) & (np.arange(sessions) >= window - 1), z, np.nan)
    return out
