"""The real-data benchmark: `python -m forecast evaluate` on every series of one half of the
benchmark store, then the per-series and mean table.

    python experiments/real_benchmark/run.py --half dev [--tag NAME] [--series SPX GOOG] [-- overrides ...]
    python experiments/real_benchmark/run.py --half confirm --tag final [-- overrides ...]
    python experiments/real_benchmark/run.py --half dev --tag NAME --score-only   # re-score saved frames

Protocol, the same for every series: yearly test blocks (`evaluate.retrain_every=252`), the first
test block 5 years after the series' first session (burn-in), expanding train window, the 252
sessions before each block as validation inside the training period (purge = horizon), the model,
the Transformer and LSTM backbones and the zero, hist_mean, ridge and lgbm baselines on exactly the
same folds. Extra overrides go to every evaluate run (after PROTOCOL, so they win).

Writes `results/<tag>/`: `<series>.parquet` (out-of-sample forecasts), `<series>_folds.csv` (per fold:
sizes, best validation loss, calibration factor, validation IC and MSE ratio of the raw forecast),
`table.md` and `table.json` (the scores with intervals), `validation.md` (the validation metrics a
configuration is chosen on). Every run is also in MLflow (`results/<tag>/mlflow.db`).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE)]
from build import SERIES  # noqa: E402
from table import markdown, mean_over_series, plain, score_series  # noqa: E402

from data_pipelines.store import read_manifest  # noqa: E402

STORE = HERE / "store"
BURN_IN_YEARS = 5
PROTOCOL = ["evaluate.retrain_every=252", "evaluate.val_sessions=252", "evaluate.train_sessions=null",
            "evaluate.backbones=[transformer,lstm]", "evaluate.baselines=[zero,hist_mean,ridge,lgbm]",
            "evaluate.cost_bps=5", "evaluate.strategy=sign", "evaluate.end=null", "data.val_start=null",
            "data.test_start=null"]


def start_of(ticker: str) -> date:
    first = read_manifest(STORE).filter(pl.col("ticker") == ticker)["first_date"][0]
    return first.replace(year=first.year + BURN_IN_YEARS)


def evaluate(ticker: str, out: Path, extra: list[str]) -> str:
    """One `python -m forecast evaluate` run; returns its MLflow run id."""
    uri = f"sqlite:///{out / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "forecast", "evaluate", f"data.store={STORE}", f"data.tickers=[{ticker}]",
           f"evaluate.start={start_of(ticker)}", *PROTOCOL, f"logger.tracking_uri={uri}",
           f"logger.experiment_name=real_benchmark_{out.name}", f"run_name={ticker}",
           f"trainer.default_root_dir={out / 'checkpoints'}", *extra]
    t0 = time.perf_counter()
    env = dict(os.environ, MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=out, env=env)
    (out / f"{ticker}.log").write_text(p.stdout + p.stderr)
    if p.returncode:
        raise SystemExit(f"{ticker}: evaluate failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the weights are in MLflow; checkpoints add nothing
    print(f"{ticker}: {time.perf_counter() - t0:.0f} s", flush=True)
    return re.search(r"run_id=(\w+)", p.stdout.strip().splitlines()[-1]).group(1)


def collect(ticker: str, out: Path, extra: list[str]) -> None:
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    from forecast.tracking.runs import load_table

    run_id = evaluate(ticker, out, extra)
    uri = f"sqlite:///{out / 'mlflow.db'}"
    load_table(uri, run_id, "predictions/oos_predictions.parquet").write_parquet(out / f"{ticker}.parquet")
    load_table(uri, run_id, "folds.csv").write_csv(out / f"{ticker}_folds.csv")


def validation_summary(out: Path, tickers: list[str]) -> str:
    """Mean over folds of each network's validation metrics (raw forecast, before calibration)."""
    lines = ["| series | network | folds | val_loss | val_ic | val_mse_rel | scale |", "|---|---|---|---|---|---|---|"]
    for t in tickers:
        folds = pl.read_csv(out / f"{t}_folds.csv")
        for net in [c.removeprefix("val_ic_") for c in folds.columns if c.startswith("val_ic_")]:
            keys = ("val_loss", "val_ic", "val_mse_rel", "scale")
            cells = [folds[f"{k}_{net}"].cast(pl.Float64).mean() for k in keys]
            lines.append(f"| {t} | {net} | {folds.height} | " + " | ".join(f"{c:.4g}" for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--half", choices=["dev", "confirm", "all"], default="dev")
    parser.add_argument("--tag", default=None, help="results/<tag>/ (default: the half)")
    parser.add_argument("--series", nargs="+", default=None, help="a subset of the half's series")
    parser.add_argument("--score-only", action="store_true", help="re-score the frames already in results/<tag>/")
    args, extra = parser.parse_known_args()
    extra = [e for e in extra if e != "--"]
    tickers = args.series or [t for t, s in SERIES.items() if args.half in ("all", s[0])]
    out = HERE / "results" / (args.tag or args.half)
    out.mkdir(parents=True, exist_ok=True)
    if not args.score_only:
        (out / "command.txt").write_text("python experiments/real_benchmark/run.py " + " ".join(sys.argv[1:]) + "\n")
        for t in tickers:
            collect(t, out, extra)
    scores = {t: score_series(pl.read_parquet(out / f"{t}.parquet")) for t in tickers}
    mean = mean_over_series(scores)
    text = markdown(scores, mean)
    (out / "table.md").write_text(text + "\n")
    (out / "table.json").write_text(json.dumps(plain(scores, mean), indent=1, default=float) + "\n")
    (out / "validation.md").write_text(validation_summary(out, tickers) + "\n")
    print(text)
    m = mean["model"]
    print(f"series={len(tickers)} ic={m['ic']:.4f} sharpe={m['sharpe']:.3f} mse_rel={m['mse_rel']:.5f} "
          f"mse_not_worse={m['mse_not_worse']:.2f} results={out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
