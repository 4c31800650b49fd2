"""Does pre-training one global model on every sample ticker, then fine-tuning on GOOG, beat a GOOG
model trained from scratch? All runs share the split dates (train < 2009 <= val < 2011 <= test),
so pre-training never sees any ticker's validation or test period.

    python experiments/pretrain_finetune/run.py [--seeds 1 2 3] [extra overrides ...]

Writes experiments/pretrain_finetune/results.md; every run is in MLflow (experiment
`pretrain_finetune`, tracking URI below).
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

HERE = Path(__file__).parent
URI = "sqlite:///mlflow.db"
COMMON = ["logger.experiment_name=pretrain_finetune", f"logger.tracking_uri={URI}", "trainer.enable_progress_bar=false"]
ARMS = {
    "scratch (GOOG only)": ["data.tickers=[GOOG]"],
    "fine-tuned (all layers)": ["data.tickers=[GOOG]", "init_from={pre}"],
    "fine-tuned (backbone frozen)": ["data.tickers=[GOOG]", "init_from={pre}", "freeze=[backbone]"],
}
METRICS = ["test/ic", "test/mse", "test/dir_acc", "baseline/zero/test/mse"]


def train(*overrides: str) -> str:
    p = subprocess.run([sys.executable, "-m", "forecast", "train", *COMMON, *overrides],
                       capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(p.stderr[-2000:])
    return re.search(r"run_id=(\w+)", p.stdout.strip().splitlines()[-1]).group(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args, extra = parser.parse_known_args()
    client, rows = MlflowClient(URI), {arm: [] for arm in ARMS}
    for seed in args.seeds:
        pre = train("experiment=multi_ticker", f"seed={seed}", *extra)
        for arm, overrides in ARMS.items():
            run = train(*[o.format(pre=pre) for o in overrides], f"seed={seed}", *extra)
            rows[arm].append(client.get_run(run).data.metrics)
    lines = ["| arm | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for arm, runs in rows.items():
        cells = []
        for m in METRICS:
            values = [r[m] for r in runs]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4g} ± {sd:.2g}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    command = "python experiments/pretrain_finetune/run.py " + " ".join(sys.argv[1:])
    text = (f"Command: `{command}`\n\nMean ± sd over seeds {args.seeds}, GOOG test split 2011-2013:\n\n"
            + "\n".join(lines))
    (HERE / "results.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
