"""Monitoring on synthetic markets with a planted break (and without one), end to end through the CLI:
synth -> ingest -> train (tiny) -> predict catch_up -> monitor; then, on one flip market, retrain=true
at the first alert and every cooldown after it until promoted, and the new champion's IC on the
sessions after retraining. Writes breaks.json beside this file.

    python experiments/monitoring/breaks.py WORKDIR [--seeds 1 2 3 4 5] [--cases flip shift none retrain]
                                                    [--shift-size 4] [--remonitor]

--remonitor re-runs only `monitor` (alerts table dropped) on markets already built in WORKDIR; results
are merged into breaks.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from forecast.inference import sessions

HERE = Path(__file__).resolve().parent
PLANT = ["tickers=30", "strength.price=0.25", "strength.exogenous=0.15", "strength.calendar=0", "strength.news=0",
         "split=false"]
TRAIN = ["data.tickers=null", "modalities=[price,ticker,exogenous]", "data.window=16", "data.batch_size=256",
         "model.d_model=16", "trainer.max_epochs=4", "trainer.enable_progress_bar=false", "data.label=cs_demean",
         "register=true", "baselines=[]"]
MARKETS = {  # days, val_start, test_start, break date
    "flip": (700, "2023-03-01", "2023-09-01", "2024-06-03"),
    "shift": (700, "2023-03-01", "2023-09-01", "2024-06-03"),
    "none": (1400, "2020-06-01", "2020-12-01", None),
}
END = "2024-12-30"


def cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "forecast", *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{' '.join(args[:2])}: {out.stderr.strip().splitlines()[-1:]}")
    return out.stdout


def build(work: Path, kind: str, seed: int, size: float, again: bool) -> dict:
    days, val, test, brk = MARKETS[kind]
    drift = [f"drift.date={brk}", f"drift.kind={kind}", f"drift.size={size}"] if brk else []
    uri = f"sqlite:///{work}/mlflow.db"
    ref = [f"logger.tracking_uri={uri}", f"predictions.url=sqlite:///{work}/p.db", "model=models:/forecast/1",
           f"data.store={work}/store"]
    if again:
        with sqlite3.connect(work / "p.db") as c:
            c.execute("DROP TABLE IF EXISTS alerts")
        return dict(ref=ref, oracle=json.loads((work / "raw" / "oracle.json").read_text()), brk=brk)
    cli("synth", f"out={work}/raw", f"days={days}", f"seed={seed}", *PLANT, *drift)
    cli("ingest", f"path={work}/raw", f"store={work}/store")
    cli("train", f"data.store={work}/store", f"data.val_start={val}", f"data.test_start={test}", *TRAIN,
        f"logger.tracking_uri={uri}", f"trainer.default_root_dir={work}/ckpt", f"seed={seed}")
    cli("predict", "catch_up=true", f"date={END}", *ref)
    return dict(ref=ref, oracle=json.loads((work / "raw" / "oracle.json").read_text()), brk=brk)


def alerts_of(out: str) -> list[tuple[str, str, str]]:
    return [(m[1], m[2], m[3]) for m in re.finditer(r"^alert (\S+) (\S+)\s+(\S+)", out, re.M)]


def between(a: str, b: str) -> int:
    """Sessions from a to b (XNYS): 0 when b is a's session."""
    return len(sessions.sessions("XNYS", dt.date.fromisoformat(a), dt.date.fromisoformat(b))) - 1


def mean_ic(db: Path, version: str, first: str | None = None, last: str | None = None) -> float:
    """Mean per-session cross-sectional IC of a version's realised predictions between as-of dates."""
    import polars as pl

    with sqlite3.connect(db) as c:
        f = pl.read_database(f"SELECT asof, forecast, realised FROM predictions WHERE version='{version}' "
                             "AND realised IS NOT NULL", c)
    f = f.filter(pl.col("asof") >= (first or "0000"), pl.col("asof") <= (last or "9999"))
    ic = f.group_by("asof").agg(ic=pl.corr("forecast", "realised"))["ic"].drop_nans().drop_nulls()
    return float(ic.mean())


def case(work: Path, kind: str, seed: int, size: float = 3.0, again: bool = False) -> dict:
    t0 = time.time()
    m = build(work, kind, seed, size, again)
    out = cli("monitor", f"date={END}", *m["ref"])
    found = alerts_of(out)
    perf = [d for d, k, _ in found if k == "performance"]
    inputs = [(d, f) for d, k, f in found if k == "input"]
    brk = m["brk"]
    res = dict(kind=kind, seed=seed, break_session=m["oracle"].get("drift", {}).get("session"),
               performance_alerts=perf, input_alerts=inputs, summary=out.strip().splitlines()[-1],
               monitored_sessions=int(re.search(r"sessions=(\d+)", out).group(1)))
    if brk:
        res["alerts_before_break"] = [a for a in found if a[0] < brk]
        after = [d for d in perf if d >= brk]
        res["delay_sessions"] = between(brk, after[0]) if after else None
        res["pre_break_ic"] = mean_ic(work / "p.db", "1", last=brk)
    res["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(res), flush=True)
    return res


def retrain(work: Path, start: str, require_alert: bool, tries: int = 6) -> dict:
    """monitor retrain=true at `start`, then every cooldown (20 sessions) until promoted."""
    ref = [f"logger.tracking_uri=sqlite:///{work}/mlflow.db", f"predictions.url=sqlite:///{work}/p.db",
           f"data.store={work}/store"]
    day, log = dt.date.fromisoformat(start), []
    for _ in range(tries):
        out = cli("monitor", f"date={day}", "retrain=true", f"challenger.require_alert={str(require_alert).lower()}",
                  "model=models:/forecast/1", *ref)
        line = re.search(r"^challenger (\S+): val IC (\S+) vs champion (\S+): (\w+)", out, re.M)
        if line:
            log.append(dict(date=str(day), run=line[1], challenger_ic=float(line[2]), champion_ic=float(line[3]),
                            verdict=line[4]))
            print(json.dumps(log[-1]), flush=True)
            if line[4] == "promoted":
                break
        day = sessions.after("XNYS", day, 20)
        if str(day) > END:
            break
    res = dict(attempts=log, promoted=bool(log and log[-1]["verdict"] == "promoted"))
    if res["promoted"]:
        after = sessions.after("XNYS", dt.date.fromisoformat(log[-1]["date"]), 1)
        cli("predict", "catch_up=true", f"since={after}", f"date={END}", *ref)
        cli("monitor", f"date={END}", *ref)  # fills the new champion's realised returns
        with sqlite3.connect(work / "p.db") as c:
            version = c.execute("SELECT max(CAST(version AS INTEGER)) FROM predictions").fetchone()[0]
        res.update(new_version=str(version), post_retrain_ic=mean_ic(work / "p.db", str(version), first=str(after)),
                   first_session_after=str(after))
    return res


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("workdir")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--cases", nargs="+", default=["flip", "shift", "none", "retrain"])
    p.add_argument("--shift-size", type=float, default=4.0)
    p.add_argument("--remonitor", action="store_true")
    a = p.parse_args()
    work = Path(a.workdir)
    out = HERE / "breaks.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    results["command"] = " ".join(["python", "experiments/monitoring/breaks.py", "WORKDIR", *sys.argv[2:]])
    if "flip" in a.cases:
        results["flip"] = [case(work / f"flip{seed}", "flip", seed, again=a.remonitor) for seed in a.seeds]
        delays = [r["delay_sessions"] for r in results["flip"]]
        found = [d for d in delays if d is not None]
        results["flip_delay"] = dict(sessions=delays, max=max(found) if found else None,
                                     mean=float(np.mean(found)) if found else None)
    if "shift" in a.cases:
        results[f"shift{a.shift_size:g}"] = case(work / f"shift{a.shift_size:g}", "shift", a.seeds[0], a.shift_size,
                                                 a.remonitor)
    if "none" in a.cases:
        results["none"] = case(work / "none", "none", a.seeds[0], again=a.remonitor)
    if "retrain" in a.cases and not a.remonitor:
        first = results["flip"][0]
        start = next(d for d in first["performance_alerts"] if d >= MARKETS["flip"][3])
        results["retrain_flip"] = retrain(work / f"flip{a.seeds[0]}", start, True)
        pre = first["pre_break_ic"]
        post = results["retrain_flip"].get("post_retrain_ic")
        results["retrain_flip"]["recovery"] = post / pre if post is not None and pre else None
        results["retrain_none"] = retrain(work / "none", "2024-06-03", False, tries=1)
    out.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
