"""`python -m forecast bench ingest`: ingest throughput against the same steps written plainly in pandas.

Both variants run in the same invocation, each in a fresh process (so peak memory is its own), on
the same synthetic Yahoo-style CSVs, after one warm-up read of every file (page cache warm for both).
Each reports its pipeline seconds (from the call of its function, its own imports included), its CPU
seconds (all threads), its process seconds (interpreter start included) and its peak RSS. The 1-minute
load average before and after is recorded: on a shared machine, wall times stretch, CPU seconds less.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

NUM = ["Open", "High", "Low", "Close", "Adj Close", "Volume"]


def pandas_ingest(src: Path, store: Path) -> dict:
    """Read, validate (values and sessions), dedup, adjust, store by ticker: plain pandas."""
    import pandas as pd

    frames = []
    for path in sorted(src.glob("*.csv")):
        df = pd.read_csv(path)
        df["ticker"] = path.stem
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    n_read = len(df)
    df, bad, conflicts, dups = pandas_rules(df)
    quarantine = pd.concat([bad, conflicts])
    for ticker, g in df.groupby("ticker"):
        (store / "prices" / f"ticker={ticker}").mkdir(parents=True, exist_ok=True)
        g.drop(columns=["ticker", "Adj Close"]).to_parquet(store / "prices" / f"ticker={ticker}" / "data.parquet")
    quarantine.astype(str).to_parquet(store / "quarantine.parquet")
    return dict(rows_read=n_read, rows_stored=len(df), rows_quarantined=len(quarantine), duplicates=dups)


def pandas_rules(df):
    """Plain pandas: parse dates and numbers, the value rules and the XNYS session check, exact
    duplicates dropped, conflicts resolved (the row read last wins), the Adj Close adjustment.
    Returns (kept and adjusted, bad rows, conflicting rows, duplicates dropped)."""
    import exchange_calendars as xcals
    import numpy as np
    import pandas as pd

    df["Date"] = pd.to_datetime(df["Date"], format="%Y-%m-%d", errors="coerce")
    df[NUM] = df[NUM].apply(pd.to_numeric, errors="coerce")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sessions = xcals.get_calendar("XNYS", start=str(df["Date"].min().date())).sessions
    px = df[["Open", "High", "Low", "Close", "Adj Close"]]
    bad = (df[["Date", *NUM]].isna().any(axis=1) | ~np.isfinite(df[NUM]).all(axis=1) | (px <= 0).any(axis=1)
           | (df["Volume"] < 0) | (df["High"] < df[["Open", "Close"]].max(axis=1))
           | (df["Low"] > df[["Open", "Close"]].min(axis=1)) | ~df["Date"].isin(sessions))
    kept = df[~bad]
    n = len(kept)
    kept = kept.drop_duplicates().sort_values(["ticker", "Date"], kind="stable")
    dups = n - len(kept)
    conflicts = kept.duplicated(["ticker", "Date"], keep="last")
    kept, conflicting = kept[~conflicts].copy(), kept[conflicts]
    f = kept["Adj Close"] / kept["Close"]
    for c in ["Open", "High", "Low", "Close"]:
        kept[c] = kept[c] * f
    kept["Volume"] = kept["Volume"] / f
    return kept, df[bad], conflicting, dups


def polars_ingest(src: Path, store: Path) -> dict:
    from data_pipelines.ingest import ingest

    rep = ingest(src, store)
    return dict(rows_read=rep.rows_read, rows_stored=rep.rows_stored, rows_quarantined=rep.rows_quarantined,
                duplicates=rep.duplicates)


def child(variant: str, src: str, store: str) -> None:
    """Run one variant and print its result as JSON (this process's peak memory included)."""
    t0 = time.perf_counter()
    fn = polars_ingest if variant == "polars" else pandas_ingest
    counts = fn(Path(src), Path(store))
    seconds = time.perf_counter() - t0
    use = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps(dict(variant=variant, seconds=round(seconds, 2), cpu_seconds=round(use.ru_utime + use.ru_stime, 1),
                          peak_rss_mb=round(use.ru_maxrss / 1024), **counts)))


def ingest(cfg) -> int:
    """Generate the data once (reused while its parameters match), time each variant, write the JSON."""
    import shutil

    from data_pipelines import synthetic

    data = Path(cfg.workdir)
    params = dict(tickers=cfg.tickers, days=cfg.days, seed=cfg.seed, dirty=cfg.dirty)
    marker = data / "params.json"
    if not marker.exists() or json.loads(marker.read_text()) != params:
        shutil.rmtree(data, ignore_errors=True)
        t = time.perf_counter()
        synthetic.generate(data, extras=False, split=False, strength={"price": 0.05}, **params)
        marker.write_text(json.dumps(params))
        print(f"generated {cfg.tickers * cfg.days} rows in {time.perf_counter() - t:.1f} s under {data}")
    files = sorted((data / "prices").glob("*.csv"))
    size = sum(p.stat().st_size for p in files)
    for p in files:  # warm the page cache for every variant alike
        p.read_bytes()
    load = os.getloadavg()[0]
    results = [_run(v, data, cfg.keep) for v in cfg.variants]
    out = dict(params, files=len(files), csv_mb=round(size / 1e6), cpus=_cpus(),
               load_avg_1min=[round(load, 1), round(os.getloadavg()[0], 1)], results=results)
    by = {r["variant"]: r for r in results}
    if {"polars", "pandas"} <= set(by):
        out["speedup"] = round(by["pandas"]["seconds"] / by["polars"]["seconds"], 2)
    for r in results:
        print(" ".join(f"{k}={v}" for k, v in r.items()))
    if "speedup" in out:
        print(f"speedup={out['speedup']} load_avg_1min(before,after)={out['load_avg_1min']} cpus={out['cpus']}")
    write_result(out, cfg.out)
    return 0


def write_result(out: dict, path: str | None, keys: tuple[str, ...] = ()) -> None:
    """A benchmark's result: `keys` on one line of stdout, the whole as JSON at `path` when given."""
    if keys:
        print(" ".join(f"{k}={out.get(k)}" for k in keys))
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(out, indent=1) + "\n")


def _run(variant: str, data: Path, keep: bool) -> dict:
    import shutil

    store = data / f"store_{variant}"
    shutil.rmtree(store, ignore_errors=True)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "data_pipelines.ingest_bench", variant, str(data / "prices"),
                           str(store)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"bench variant {variant} failed: {proc.stderr.strip()[-500:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_seconds"] = round(time.perf_counter() - t, 2)
    if not keep:
        shutil.rmtree(store, ignore_errors=True)
    return result


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    child(*sys.argv[1:4])
