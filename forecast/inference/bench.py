"""`python -m forecast bench predict tickers=500 out=<file.json>`: the seconds one `predict` takes over a
synthetic store of N tickers, whole process included.

A synthetic market (`synth`, prices only) is ingested into a store and a tiny model is trained on all
of its tickers and registered, both through the CLI and once per (tickers, days), kept in `workdir`.
Then `predict` runs as a subprocess for each of the last `repeats` sessions, into a fresh table each
time, timed from before the process starts until it exits. Its phases come from `perf_file`:
start-up (interpreter, imports, config, the model reference and its loading), reading (store ->
windows), model (forward passes and input hashes) and writing (one transaction). The process's CPU
seconds and the load average are recorded too: on a shared machine the wall clock says as much about
the neighbours as about predict. A benchmark, never a test: the JSON goes to `out`
(experiments/predict_speed/).
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from forecast.errors import UserError

PHASES = ("startup", "read", "model", "write")


def cli(*args: str) -> str:
    """Run `python -m forecast <args>`; its stdout, or a UserError with the end of its stderr."""
    p = subprocess.run([sys.executable, "-m", "forecast", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise UserError(f"bench predict: `forecast {' '.join(args[:2])}` failed: {p.stderr.strip()[-500:]}")
    return p.stdout


def prepare(work: Path, tickers: int, days: int, seed: int) -> str:
    """The store and the registered model of this size (made once); returns the tracking URI."""
    uri = f"sqlite:///{work / 'mlflow.db'}"
    if (work / "ready").exists():
        return uri
    work.mkdir(parents=True, exist_ok=True)
    cli("synth", f"out={work / 'raw'}", f"tickers={tickers}", f"days={days}", f"seed={seed}", "extras=false",
        "split=false")
    cli("ingest", f"path={work / 'raw'}", f"store={work / 'store'}", "exchange=XNYS")
    cli("train", f"data.store={work / 'store'}", "data.tickers=null", "model.d_model=16", "trainer.max_epochs=1",
        "+trainer.limit_train_batches=4", "+trainer.limit_val_batches=2", "trainer.enable_progress_bar=false",
        "baselines=[zero]", "register=true", f"logger.tracking_uri={uri}",
        f"trainer.default_root_dir={work / 'ckpt'}", f"hydra.run.dir={work / 'out'}")
    (work / "ready").touch()
    return uri


def timed(work: Path, uri: str, day: str, i: int) -> dict:
    """One `predict` process for as-of `day` into a fresh table: total seconds and the share per phase."""
    db, perf = work / f"predictions-{i}.db", work / f"perf-{i}.json"
    db.unlink(missing_ok=True)
    cpu, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    out = cli("predict", f"date={day}", f"logger.tracking_uri={uri}", f"predictions.url=sqlite:///{db}",
              f"perf_file={perf}")
    total, after = time.time() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime  # less than wall: 1 thread mostly
    p = json.loads(perf.read_text())
    seconds = dict(startup=p["started"] - start + p["phases"]["plan"] + p["phases"]["load"],
                   **{k: p["phases"][k] for k in PHASES[1:]})
    seconds["other"] = total - sum(seconds.values())  # printing, interpreter exit
    return dict(asof=day, total_s=total, cpu_s=cpu_s, load_average=os.getloadavg()[0], seconds=seconds,
                summary=out.strip().splitlines()[-1].split(" url=")[0])


def predict_speed(cfg) -> int:
    from data_pipelines.store import read_manifest

    work = Path(cfg.workdir) / f"{cfg.tickers}x{cfg.days}"
    uri = prepare(work, int(cfg.tickers), int(cfg.days), int(cfg.seed))
    last = read_manifest(work / "store")["last_date"].max()
    from forecast.inference import sessions

    days = [str(d) for d in sessions.sessions("XNYS", last.replace(day=1), last)[-int(cfg.repeats):]]
    runs = [timed(work, uri, d, i) for i, d in enumerate(days)]
    total = statistics.median(r["total_s"] for r in runs)
    mean = {k: statistics.mean(r["seconds"][k] for r in runs) for k in (*PHASES, "other")}
    result = dict(tickers=int(cfg.tickers), days=int(cfg.days), repeats=len(runs), total_s=round(total, 3),
                  per_ticker_ms=round(1000 * total / int(cfg.tickers), 3),
                  cpu_s=round(statistics.median(r["cpu_s"] for r in runs), 3),
                  load_average=round(statistics.mean(r["load_average"] for r in runs), 2),
                  share={k: round(v / sum(mean.values()), 3) for k, v in mean.items()},
                  seconds={k: round(v, 3) for k, v in mean.items()}, goal_s=10.0,
                  cores=len(os.sched_getaffinity(0)), runs=runs)
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps(result, indent=1))
    for r in runs:
        print(f"asof {r['asof']}: {r['total_s']:.2f} s  ({r['summary']})")
    shares = " ".join(f"{k}={v:.0%}" for k, v in result["share"].items())
    print(f"total_s={result['total_s']} per_ticker_ms={result['per_ticker_ms']} cpu_s={result['cpu_s']} "
          f"{shares} load_average={result['load_average']} out={cfg.out}")
    return 0
