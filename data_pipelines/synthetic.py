"""`python -m forecast synth out=<dir> tickers=N days=T seed=S`: a market with planted signals.

Log returns r[t, i] (session t, ticker i) are noise plus four planted components, each known at the
close of session t-1 and scaled by `strength.<name>` x the ticker's conditional noise volatility:
    price      cross-sectional reversal: -(r[t-1, i] - mean_j r[t-1, j])
    exogenous  loading b_i x LEAD[t-1], an AR(1) series published daily in macro.csv (lag 0)
    calendar   loading c_i x g(t): Monday low, Friday high, first session of a month high
    news       sentiment (+1 / 0 / -1 from a small vocabulary) of the ticker's headline assigned to
               session t-1 (published between the closes of t-2 and t-1, in New York or UTC time)
The noise has a market factor and sector factors, GARCH(1,1) volatility clustering and a two-state
regime (calm / stressed) that scales volatility and drift. macro.csv also holds CPI, a monthly
random walk with a 45-day publication lag and no signal (a decoy for look-ahead bugs).

A planted break (`drift.date`, `drift.kind`), for monitoring: from the first session on or after the
date every planted component's sign flips (`flip`), or fades linearly to zero over `drift.sessions`
sessions (`decay`), or (`shift`) the published level of one exogenous series (`drift.series`) jumps
by `drift.size` of its standard deviations, as a vendor's change of definition would: the returns
still follow the unshifted series, so the inputs drift while the relation does not.

Written: prices/<TICKER>.csv (Yahoo, Stooq or mixed layouts; with `split`, the first ticker has a
2:1 split that only Adj Close undoes), macro.csv, lag_days.json (CPI's lag, read by `ingest`),
news.csv and oracle.json, which holds the IC that a perfect model of each component reaches on these
very returns (and of all of them together). `ingest path=<out>` stores all of it in one command.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import polars as pl

from data_pipelines import calendars

POSITIVE = ["beats estimates", "raises guidance", "wins major contract", "upgraded to buy", "posts record revenue"]
NEGATIVE = ["misses estimates", "cuts guidance", "loses major contract", "downgraded to sell", "faces regulator probe"]
NEUTRAL = ["schedules earnings call", "names new director", "files quarterly report"]
COMPONENTS = ("price", "exogenous", "calendar", "news")


def grid_start(days: int, end: str) -> dt.date:
    """A calendar start early enough to hold `days` sessions before `end`, with room to spare."""
    return dt.date.fromisoformat(end) - dt.timedelta(days=int(days * 1.5) + 30)


def session_grid(days: int, end: str, exchange: str = "XNYS") -> np.ndarray:
    """The last `days` sessions of `exchange` up to `end` (datetime64[D])."""
    end_d = dt.date.fromisoformat(end)
    s = calendars.sessions(exchange, grid_start(days, end)).to_numpy()
    s = s[s <= np.datetime64(end_d)]
    return s[-days:]


def calendar_signal(days: np.ndarray) -> np.ndarray:
    """g(t), unit variance: Monday -1, Friday +1, first session of a month +1.5 (known in advance)."""
    dow = (days.astype("datetime64[D]").view("int64") - 4) % 7          # 0 = Monday
    month = days.astype("datetime64[M]")
    first = np.r_[True, month[1:] != month[:-1]]
    g = np.where(dow == 0, -1.0, 0.0) + np.where(dow == 4, 1.0, 0.0) + 1.5 * first
    return (g - g.mean()) / g.std()


def garch(rng, shape: tuple, base: float, alpha=0.08, beta=0.9) -> tuple[np.ndarray, np.ndarray]:
    """(shocks, conditional vols) of GARCH(1,1) paths with unconditional vol `base`, shape (T, N)."""
    T, N = shape
    z = rng.standard_normal((T, N))
    var = np.full(N, base ** 2)
    omega = base ** 2 * (1 - alpha - beta)
    eps, vol = np.empty((T, N)), np.empty((T, N))
    for t in range(T):
        vol[t] = np.sqrt(var)
        eps[t] = vol[t] * z[t]
        var = omega + alpha * eps[t] ** 2 + beta * var
    return eps, vol


def break_index(days: np.ndarray, drift: dict | None) -> int | None:
    """The first session on or after `drift.date` (None: no break, or a date past the grid)."""
    if not drift or not drift.get("date"):
        return None
    i = int(np.searchsorted(days, np.datetime64(str(drift["date"]), "D")))
    return i if i < len(days) else None


def loading_factor(T: int, at: int | None, drift: dict | None) -> np.ndarray:
    """(T,) multiplier of every planted component: 1, then -1 (`flip`) or a linear fade to 0 (`decay`)."""
    m = np.ones(T)
    if at is None or drift["kind"] == "shift":
        return m
    if drift["kind"] == "flip":
        m[at:] = -1.0
    else:  # decay
        m[at:] = np.clip(1.0 - (np.arange(T - at) + 1) / max(int(drift.get("sessions", 20)), 1), 0.0, 1.0)
    return m


def simulate(n: int, days: np.ndarray, seed: int, strength: dict, news_rate: float,
             factor: np.ndarray | None = None) -> dict:
    """Returns (T, N), components (T, N) each, LEAD (T,), news events, as arrays; `factor` (T,)
    multiplies every planted component (a break)."""
    rng = np.random.default_rng(seed)
    T = len(days)
    stay = {0: 0.99, 1: 0.95}
    regime = np.zeros(T, dtype=int)
    for t in range(1, T):
        regime[t] = regime[t - 1] if rng.random() < stay[regime[t - 1]] else 1 - regime[t - 1]
    scale = np.where(regime == 1, 2.2, 1.0)[:, None]                      # (T, 1)
    drift = np.where(regime == 1, -0.0008, 0.0004)[:, None]
    f_eps, f_vol = garch(rng, (T, 1), 0.009)
    sectors = rng.integers(0, 5, n)
    s_eps, s_vol = garch(rng, (T, 5), 0.006)
    e_eps, e_vol = garch(rng, (T, n), 0.015)
    beta = 1 + 0.3 * rng.standard_normal(n)
    noise = scale * (beta * f_eps + s_eps[:, sectors] + e_eps)             # (T, N)
    sigma = scale * np.sqrt((beta * f_vol) ** 2 + s_vol[:, sectors] ** 2 + e_vol ** 2)  # known at t-1
    lead = np.zeros(T)
    for t in range(1, T):
        lead[t] = 0.9 * lead[t - 1] + np.sqrt(1 - 0.81) * rng.standard_normal()
    b, c = rng.standard_normal(n), rng.standard_normal(n)
    comp = {k: np.zeros((T, n)) for k in COMPONENTS}
    comp["exogenous"][1:] = strength["exogenous"] * sigma[1:] * b * lead[:-1, None]
    comp["calendar"][:] = strength["calendar"] * sigma * c * calendar_signal(days)[:, None]
    has_news = rng.random((T, n)) < news_rate
    sentiment = np.where(has_news, rng.choice([-1, 0, 1], size=(T, n), p=[0.35, 0.3, 0.35]), 0)
    comp["news"][1:] = strength["news"] * sigma[1:] * sentiment[:-1]
    m = np.ones(T) if factor is None else factor  # (T,)
    for k in ("exogenous", "calendar", "news"):
        comp[k] *= m[:, None]
    r = np.zeros((T, n))
    for t in range(1, T):
        prev = r[t - 1] - r[t - 1].mean()
        comp["price"][t] = -m[t] * strength["price"] * sigma[t] / sigma[t - 1] * prev
        r[t] = drift[t] + noise[t] + sum(comp[k][t] for k in COMPONENTS)
    return dict(r=r, comp=comp, lead=lead, has_news=has_news, sentiment=sentiment, sigma=sigma)


def ohlcv(rng, r: np.ndarray, sigma: np.ndarray) -> dict[str, np.ndarray]:
    """Prices consistent with the returns: close from r, an overnight gap, a high-low range."""
    close = rng.uniform(20, 200, r.shape[1]) * np.exp(np.cumsum(r, axis=0))
    prev = np.vstack([close[:1] * np.exp(-r[:1]), close[:-1]])
    open_ = prev * np.exp(0.3 * r + 0.2 * sigma * rng.standard_normal(r.shape))
    hi = np.maximum(open_, close) * np.exp(np.abs(0.4 * sigma * rng.standard_normal(r.shape)))
    lo = np.minimum(open_, close) * np.exp(-np.abs(0.4 * sigma * rng.standard_normal(r.shape)))
    vol = np.round(rng.lognormal(13, 0.5, r.shape[1]) * (1 + 30 * np.abs(r)))
    out = {k: np.round(v, 4) for k, v in dict(open=open_, high=hi, low=lo, close=close).items()}
    out["high"] = np.maximum.reduce([out["high"], out["open"], out["close"]])
    out["low"] = np.minimum.reduce([out["low"], out["open"], out["close"]])
    return dict(out, volume=vol)


def ic_stats(pred: np.ndarray, realised: np.ndarray) -> dict:
    """Mean daily cross-sectional Pearson and Spearman IC, and the pooled correlation."""
    def corr_rows(a, b):
        a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
        den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
        return np.divide((a * b).sum(1), den, out=np.full(len(a), np.nan), where=den > 0)
    rank = lambda x: x.argsort(1).argsort(1).astype(float)  # noqa: E731
    ok = np.ones(len(pred), bool) if pred.shape[1] > 1 else np.zeros(len(pred), bool)
    ic = corr_rows(pred[ok], realised[ok])
    ric = corr_rows(rank(pred[ok]), rank(realised[ok]))
    pooled = np.corrcoef(pred.ravel(), realised.ravel())[0, 1] if pred.std() > 0 else float("nan")
    return dict(ic=float(np.nanmean(ic)) if ok.any() else None,
                rank_ic=float(np.nanmean(ric)) if ok.any() else None, pooled_ic=float(pooled))


def price_frames(names: list[str], days: np.ndarray, px: dict, split: bool, dirty: float, rng) -> dict:
    """Per-ticker frames (Date, Open, High, Low, Close, Adj Close, Volume): adjusted prices, except
    that with `split` the first ticker's raw prices before mid-sample are doubled (a 2:1 split).
    With `dirty`, that fraction of tickers gets duplicates, a conflict, a bad row and a weekend date."""
    frames = {}
    for i, name in enumerate(names):
        f = np.where((np.arange(len(days)) < len(days) // 2) & split & (i == 0), 2.0, 1.0)
        df = pl.DataFrame(dict(Date=days, Open=px["open"][:, i] * f, High=px["high"][:, i] * f,
                               Low=px["low"][:, i] * f, Close=px["close"][:, i] * f,
                               **{"Adj Close": px["close"][:, i]}, Volume=np.round(px["volume"][:, i] / f)))
        df = df.with_columns(pl.col("Date").cast(pl.Date), pl.col("Volume").cast(pl.Int64))
        if rng.random() < dirty:
            df = _dirty(df, rng)
        frames[name] = df
    return frames


def _dirty(df: pl.DataFrame, rng) -> pl.DataFrame:
    k = [int(x) for x in rng.integers(1, df.height - 1, 3)]
    dup = df[k[0]]
    conflict = df[k[1]].with_columns(pl.col("Close") * 1.01, pl.col("Adj Close") * 1.01, pl.col("High") * 1.02)
    bad = df[k[2]].with_columns(pl.lit(-1.0).alias("Low"))
    weekend = df[k[2]].with_columns(pl.lit(dt.date(2021, 1, 2)).alias("Date"))  # a Saturday
    return pl.concat([df, dup, conflict, bad, weekend])


def write_vendor_files(out: Path, frames: dict, layout: str) -> None:
    """Yahoo (TICKER.csv), Stooq bulk (ticker.us.txt with <TICKER> column, YYYYMMDD), or mixed."""
    out.mkdir(parents=True, exist_ok=True)
    for i, (name, df) in enumerate(frames.items()):
        if layout == "yahoo" or (layout == "mixed" and i % 2 == 0):
            df.write_csv(out / f"{name}.csv")  # values are rounded already (float_precision is slow)
            continue
        adj = df["Adj Close"] / df["Close"]
        stooq = df.select(pl.lit(name).alias("<TICKER>"), pl.lit("D").alias("<PER>"),
                          pl.col("Date").dt.strftime("%Y%m%d").alias("<DATE>"), pl.lit("000000").alias("<TIME>"),
                          *[(pl.col(c) * adj).round(4).alias(f"<{c.upper()}>")
                            for c in ("Open", "High", "Low", "Close")],
                          (pl.col("Volume") / adj).round(0).cast(pl.Int64).alias("<VOL>"), pl.lit(0).alias("<OPENINT>"))
        stooq.write_csv(out / f"{name.lower()}.us.txt")


def write_macro(out: Path, days: np.ndarray, lead: np.ndarray, rng) -> None:  # lead: as published
    """macro.csv: LEAD stamped at each session (known at its close), CPI stamped on month starts;
    lag_days.json: CPI's publication lag, which `ingest` applies to the folder's macro tables."""
    (out / "lag_days.json").write_text(json.dumps({"CPI": 45}) + "\n")
    months = np.unique(days.astype("datetime64[M]")).astype("datetime64[D]")
    cpi = 250 * np.exp(np.cumsum(0.002 + 0.003 * rng.standard_normal(len(months))))
    a = pl.DataFrame(dict(DATE=days, LEAD=np.round(lead, 6))).with_columns(pl.col("DATE").cast(pl.Date))
    b = pl.DataFrame(dict(DATE=months, CPI=np.round(cpi, 3))).with_columns(pl.col("DATE").cast(pl.Date))
    a.join(b, on="DATE", how="full", coalesce=True).sort("DATE").write_csv(out / "macro.csv")


def write_news(out: Path, names: list[str], days: np.ndarray, sim: dict, exchange: str, rng) -> int:
    """news.csv: one headline per news event, published between the previous close and the close of
    its session (40% in the evening right after the previous close, as earnings releases are); half
    the times written in New York time with offset, half in UTC ('Z')."""
    cal = calendars.calendar(exchange, grid_start(len(days), str(days[-1])))
    closes = cal.closes.dt.tz_convert(None).to_numpy().astype("datetime64[s]")
    sess = cal.sessions.values.astype("datetime64[D]")
    close_of = closes[np.searchsorted(sess, days)]
    prev_close = np.r_[close_of[0] - np.timedelta64(1, "D"), close_of[:-1]]
    t_idx, i_idx = np.nonzero(sim["has_news"])
    span = (close_of[t_idx] - prev_close[t_idx]).astype(np.int64)         # seconds
    evening = rng.random(len(t_idx)) < 0.4                                 # 40% in the 8 h after a close
    lo = np.where(evening, 0, 8 * 3600)
    hi = np.where(evening, 8 * 3600, span - 1)
    when = prev_close[t_idx] + (lo + rng.uniform(0.0, 1.0, len(t_idx)) * (hi - lo)).astype(np.int64) + 1
    sent = sim["sentiment"][t_idx, i_idx]
    phrase = [rng.choice(POSITIVE if s > 0 else NEGATIVE if s < 0 else NEUTRAL) for s in sent]
    df = pl.DataFrame(dict(t=when.astype("datetime64[us]"), ticker=np.array(names)[i_idx],
                           headline=[f"{names[i]} {p}" for i, p in zip(i_idx, phrase)]))
    utc = pl.col("t").dt.replace_time_zone("UTC")
    text = pl.when(pl.int_range(pl.len()) % 2 == 0).then(
        utc.dt.convert_time_zone("America/New_York").dt.strftime("%Y-%m-%dT%H:%M:%S%:z")).otherwise(
        utc.dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    df.select(text.alias("published_at"), "ticker", "headline").write_csv(out / "news.csv")
    return df.height


def oracle(sim: dict, px: dict, days: np.ndarray, strength: dict) -> dict:
    """IC of a perfect model of each component (and of their sum) against the written returns."""
    realised = np.diff(np.log(px["close"]), axis=0)                        # (T-1, N): r at t = 1..T-1
    comps = {k: v[1:] for k, v in sim["comp"].items()}
    out = {k: dict(strength=strength[k], **ic_stats(comps[k], realised)) for k in COMPONENTS if strength[k]}
    out["all"] = ic_stats(sum(comps.values()), realised)
    return out


def generate(out: str | Path, tickers: int = 50, days: int = 1500, seed: int = 0, end: str = "2024-12-31",
             exchange: str = "XNYS", layout: str = "yahoo", strength: dict | None = None,
             news_rate: float = 0.1, split: bool = True, dirty: float = 0.0, extras: bool = True,
             drift: dict | None = None) -> dict:
    """Write the synthetic market under `out`; returns the oracle (also written as oracle.json)."""
    strength = {k: float((strength or {}).get(k, 0.0)) for k in COMPONENTS}
    out = Path(out)
    rng = np.random.default_rng(seed + 1)
    grid = session_grid(days, end, exchange)
    names = [f"S{i:04d}" for i in range(tickers)]
    at = break_index(grid, drift)
    sim = simulate(tickers, grid, seed, strength, news_rate, loading_factor(len(grid), at, drift))
    px = ohlcv(rng, sim["r"], sim["sigma"])
    write_vendor_files(out / "prices", price_frames(names, grid, px, split, dirty, rng), layout)
    info = dict(seed=seed, tickers=tickers, days=len(grid), exchange=exchange, layout=layout,
                first_session=str(grid[0]), last_session=str(grid[-1]),
                target="log return close(t-1) -> close(t); every component is known at close(t-1)",
                split=dict(ticker=names[0], first_date_after=str(grid[len(grid) // 2]), ratio=2) if split else None)
    published = sim["lead"].copy()
    if at is not None and drift["kind"] == "shift":
        published[at:] += float(drift.get("size", 3.0)) * sim["lead"].std()
    if drift and drift.get("date"):
        info["drift"] = dict(kind=drift["kind"], date=drift["date"] and str(drift["date"]),
                             session=str(grid[at]) if at is not None else None, index=at,
                             **({"series": "LEAD", "size": float(drift.get("size", 3.0))} if drift["kind"] == "shift"
                                else {"sessions": int(drift.get("sessions", 20))} if drift["kind"] == "decay" else {}))
    if extras:
        write_macro(out, grid, published, rng)
        info["news_rows"] = write_news(out, names, grid, sim, exchange, rng)
        info["macro"] = dict(LEAD=dict(lag_days=0, signal=True), CPI=dict(lag_days=45, signal=False))
    info["oracle"] = oracle(sim, px, grid, strength)
    (out / "oracle.json").write_text(json.dumps(info, indent=1))
    return info


def run(cfg) -> int:
    """Entry point for `python -m forecast synth`; prints where the data went and how to ingest it."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True)
    c.pop("hydra", None)
    if c["layout"] not in ("yahoo", "stooq", "mixed"):
        from data_pipelines.store import StoreError
        raise StoreError(f"layout: {c['layout']!r} is not one of yahoo, stooq, mixed")
    info = generate(**c)
    all_ic = info["oracle"]["all"]
    print(f"tickers={info['tickers']} days={info['days']} rows={info['tickers'] * info['days']} "
          f"out={c['out']} oracle_ic_all={all_ic['ic']:.4f}" if all_ic["ic"] is not None else "")
    if c.get("extras", True):
        print(f"ingest: python -m forecast ingest path={c['out']} store=<store>  "
              f"(prices/, macro.csv with the lags of lag_days.json, news.csv)")
    return 0
