"""Does each encoder find the signal planted in its modality? Train on a synthetic market with every
modality on, then with each one removed, on the same date split; compare the test IC with the IC of a
perfect model of the components each configuration can see, on the very same test anchors.

    python experiments/modality_ablation/run.py [--seeds 0 1] [extra train overrides ...]

Builds the market once (`python -m forecast synth`, then `ingest`) under outputs/modality_ablation/,
trains every configuration with `python -m forecast train experiment=modality_ablation`, writes
experiments/modality_ablation/results.{json,md} and logs the table to MLflow (experiment
`modality_ablation`, one summary run beside the training runs).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient

from data_pipelines.synthetic import COMPONENTS, session_grid, simulate
from forecast.metrics import rank_metrics

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
URI = "sqlite:///mlflow.db"
OUT = Path("outputs/modality_ablation")
MARKET = dict(tickers=50, days=1500, seed=0, end="2024-12-31", news_rate=0.1,
              strength=dict(price=0.08, exogenous=0.08, calendar=0.05, news=0.3))
ALL = ["price", "calendar", "exogenous", "ticker", "news"]
CONFIGS = {"all": ALL, **{f"- {m}": [x for x in ALL if x != m] for m in ALL}}
# the planted components a configuration can model: the per-ticker loadings of the exogenous and
# calendar components are only learnable with the ticker identity
SEES = {"price": {"price"}, "calendar": {"calendar"}, "exogenous": {"exogenous"}, "news": {"news"}, "ticker": set()}


def slug(name: str) -> str:
    return name.replace("- ", "without_")


def run(*args: str, env: dict | None = None) -> str:
    p = subprocess.run([sys.executable, "-m", "forecast", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if p.returncode:
        raise SystemExit(f"failed: forecast {' '.join(args)}\n{p.stderr[-3000:]}")
    return p.stdout


def build_market() -> str:
    store, raw = OUT / "store", OUT / "raw"
    if not (ROOT / store / "manifest.parquet").exists():
        s = MARKET["strength"]
        run("synth", f"out={raw}", f"tickers={MARKET['tickers']}", f"days={MARKET['days']}", f"seed={MARKET['seed']}",
            f"end={MARKET['end']}", f"news_rate={MARKET['news_rate']}", *[f"strength.{k}={v}" for k, v in s.items()])
        run("ingest", f"path={raw}/prices", f"store={store}", f"exogenous.path={raw}/macro.csv",
            "exogenous.lag_days={CPI:45}", f"news.path={raw}/news.csv")
    return str(store)


def visible(modalities: list[str]) -> set[str]:
    seen = set().union(*(SEES[m] for m in modalities))
    return seen if "ticker" in modalities else seen - {"exogenous", "calendar"}


def test_components(store: str, overrides: list[str]) -> pl.DataFrame:
    """(ticker, date, realised, <component>...) on the test anchors: each planted component of the
    target's return, re-simulated from the market's seed."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=modality_ablation", f"data.store={store}", "modalities=[price]",
                                          *[o for o in overrides if o.startswith("data.")]])
    dm = instantiate(cfg.data)
    dm.setup()
    days = session_grid(MARKET["days"], MARKET["end"])
    sim = simulate(MARKET["tickers"], days, MARKET["seed"], MARKET["strength"], MARKET["news_rate"])
    test = dm.frame[dm.anchors["test"].numpy()].select("ticker", "date", realised=pl.col("target"))
    t = np.searchsorted(days, test["date"].to_numpy().astype("datetime64[D]")) + dm.horizon  # the target's session
    i = test["ticker"].str.slice(1).cast(pl.Int64).to_numpy()  # S0007 -> 7
    return test.with_columns(**{k: sim["comp"][k][t, i] for k in COMPONENTS})


def oracle_ics(test: pl.DataFrame) -> dict[str, float]:
    """Test IC of a perfect model of the components each configuration can see."""
    return {name: rank_metrics(test.with_columns(pred=pl.sum_horizontal(*visible(mods))))["ic"]
            for name, mods in CONFIGS.items()}


def component_corr(run_id: str, test: pl.DataFrame) -> dict[str, float]:
    """Correlation of a run's test forecasts with each planted component: what the model found."""
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="predictions/test_predictions.parquet",
                                               tracking_uri=URI)
    f = pl.read_parquet(path).select("ticker", "date", "pred").join(test, on=["ticker", "date"])
    return {k: float(np.corrcoef(f["pred"], f[k])[0, 1]) for k in COMPONENTS}


def train_all(store: str, seeds: list[int], extra: list[str], test: pl.DataFrame) -> dict[str, list[dict]]:
    env = dict(os.environ, OMP_NUM_THREADS="1")  # small models: one thread beats two contended ones
    client, runs = MlflowClient(URI), {name: [] for name in CONFIGS}
    for seed in seeds:
        for name, mods in CONFIGS.items():
            out = run("train", "experiment=modality_ablation", f"data.store={store}", f"modalities=[{','.join(mods)}]",
                      f"seed={seed}", f"run_name=ablation_{slug(name)}_seed{seed}", f"logger.tracking_uri={URI}",
                      "trainer.enable_progress_bar=false", *extra, env=env)
            run_id = re.search(r"run_id=(\w+)", out.strip().splitlines()[-1]).group(1)
            metrics = client.get_run(run_id).data.metrics
            runs[name].append(dict(seed=seed, run_id=run_id, ic=metrics["test/ic"], rank_ic=metrics["test/rank_ic"],
                                   found=component_corr(run_id, test)))
            print(f"{name:<12} seed={seed} test/ic={metrics['test/ic']:.4f} run_id={run_id}", flush=True)
    return runs


def table(runs: dict, oracle: dict, oracle_json: dict, command: str) -> str:
    full = statistics.mean(r["ic"] for r in runs["all"])
    lines = [f"Command: `{command}`", "",
             f"Oracle IC of every component on the test anchors: **{oracle['all']:.4f}** "
             f"(oracle.json, whole sample: {oracle_json['all']['ic']:.4f}). IC = mean daily cross-sectional "
             "Pearson correlation (test/ic).", "",
             "| configuration | test IC (mean ± sd over seeds) | % of full oracle | drop vs all | oracle IC of the "
             "components it can see | planted share (oracle drop) | " + " | ".join(f"corr. with {k}" for k in COMPONENTS)
             + " |", "|---" * (6 + len(COMPONENTS)) + "|"]
    for name in CONFIGS:
        ics = [r["ic"] for r in runs[name]]
        mean, sd = statistics.mean(ics), statistics.stdev(ics) if len(ics) > 1 else 0.0
        drop = "" if name == "all" else f"{full - mean:+.4f}"
        share = "" if name == "all" else f"{oracle['all'] - oracle[name]:+.4f}"
        found = [statistics.mean(r["found"][k] for r in runs[name]) for k in COMPONENTS]
        lines.append(f"| {name} | {mean:.4f} ± {sd:.4f} | {100 * mean / oracle['all']:.0f}% | {drop} | "
                     f"{oracle[name]:.4f} | {share} | " + " | ".join(f"{c:.2f}" for c in found) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args, extra = parser.parse_known_args()
    os.chdir(ROOT)
    store = build_market()
    test = test_components(store, extra)
    oracle = oracle_ics(test)
    runs = train_all(store, args.seeds, extra, test)
    oracle_json = json.loads((OUT / "raw" / "oracle.json").read_text())["oracle"]
    command = "python experiments/modality_ablation/run.py " + " ".join(sys.argv[1:])
    text = table(runs, oracle, oracle_json, command)
    (HERE / "results.md").write_text(text)
    (HERE / "results.json").write_text(json.dumps(dict(command=command, market=MARKET, oracle_test=oracle,
                                                       oracle_json=oracle_json, runs=runs), indent=1))
    mlflow.set_tracking_uri(URI)
    mlflow.set_experiment("modality_ablation")
    with mlflow.start_run(run_name="ablation table"):
        mlflow.log_params(dict(seeds=str(args.seeds), extra=" ".join(extra) or "-", **{
            k: v for k, v in MARKET.items() if k != "strength"}))
        for name in CONFIGS:
            key = slug(name)
            mlflow.log_metric(f"{key}/test_ic", statistics.mean(r["ic"] for r in runs[name]))
            mlflow.log_metric(f"{key}/oracle_ic", oracle[name])
        mlflow.log_text(text, "results.md")
    print(text)


if __name__ == "__main__":
    main()
