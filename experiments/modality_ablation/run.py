"""Does each encoder find the signal planted in its modality? Train on a synthetic market with every
modality on, then with each one removed, on the same date split; compare the test IC with the IC of a
perfect model of the components each configuration can see, on the very same test anchors.

    python experiments/modality_ablation/run.py [--seeds 0 1] [--jobs 2] [extra train overrides ...]
    python experiments/modality_ablation/run.py --tune NAME [--configs all,without_news] [--seeds 0] [overrides ...]

Builds the market once (`python -m forecast synth`, then `ingest`) under outputs/modality_ablation/,
trains every configuration with `python -m forecast train experiment=modality_ablation`, writes
experiments/modality_ablation/results.{json,md} and logs the table to MLflow (experiment
`modality_ablation`, one summary run beside the training runs).

`--tune NAME` is for choosing settings: it trains the chosen configurations and appends their
validation IC (`val/ic` at the epoch kept, the one with the best validation loss) to tuning.{json,md};
it never reads a test metric.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient

from data_pipelines.synthetic import COMPONENTS, session_grid, simulate
from forecast.evaluation.metrics import rank_metrics

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
URI = "sqlite:///mlflow.db"
OUT = Path("outputs/modality_ablation")
MARKET = dict(tickers=50, days=1500, seed=0, end="2024-12-31", news_rate=0.1,
              strength=dict(price=0.08, exogenous=0.08, calendar=0.08, news=0.3))
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
    """Simulate and ingest the market once; refuse a market built earlier with other settings."""
    store, raw = OUT / "store", OUT / "raw"
    if (ROOT / store / "manifest.parquet").exists():
        built = json.loads((ROOT / raw / "oracle.json").read_text())
        had = dict(tickers=built["tickers"], days=built["days"], seed=built["seed"],
                   strength={k: built["oracle"][k]["strength"] for k in MARKET["strength"]})
        if had != {k: MARKET[k] for k in had}:
            raise SystemExit(f"{OUT} holds a market built with {had}; this experiment uses {MARKET}: "
                             f"remove {OUT} to rebuild it")
    else:
        s = MARKET["strength"]
        run("synth", f"out={raw}", f"tickers={MARKET['tickers']}", f"days={MARKET['days']}", f"seed={MARKET['seed']}",
            f"end={MARKET['end']}", f"news_rate={MARKET['news_rate']}", *[f"strength.{k}={v}" for k, v in s.items()])
        run("ingest", f"path={raw}/prices", f"store={store}", f"exogenous.path={raw}/macro.csv",
            "exogenous.lag_days={CPI:45}", f"news.path={raw}/news.csv")
    return str(store)


def visible(modalities: list[str]) -> set[str]:
    seen = set().union(*(SEES[m] for m in modalities))
    return seen if "ticker" in modalities else seen - {"exogenous", "calendar"}


def components(store: str, overrides: list[str], split: str = "test") -> pl.DataFrame:
    """(ticker, date, realised, <component>...) on the anchors of `split`: each planted component of
    the target's return, re-simulated from the market's seed."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=modality_ablation", f"data.store={store}", "modalities=[price]",
                                          *[o for o in overrides if o.startswith("data.")]])
    dm = instantiate(cfg.data)
    dm.setup()
    days = session_grid(MARKET["days"], MARKET["end"])
    sim = simulate(MARKET["tickers"], days, MARKET["seed"], MARKET["strength"], MARKET["news_rate"])
    test = dm.frame[dm.anchors[split].numpy()].select("ticker", "date", realised=pl.col("target"))
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


def train_one(store: str, name: str, seed: int, extra: list[str], prefix: str = "ablation") -> str:
    """Train configuration `name` with `seed`; returns the MLflow run id."""
    env = dict(os.environ, OMP_NUM_THREADS="1")  # small models: one thread beats two contended ones
    out = run("train", "experiment=modality_ablation", f"data.store={store}", f"modalities=[{','.join(CONFIGS[name])}]",
              f"seed={seed}", f"run_name={prefix}_{slug(name)}_seed{seed}", f"logger.tracking_uri={URI}",
              "trainer.enable_progress_bar=false", *extra, env=env)
    return re.search(r"run_id=(\w+)", out.strip().splitlines()[-1]).group(1)


def validation(client: MlflowClient, run_id: str) -> dict:
    """val/ic and val/loss at the epoch kept (the best validation loss), and the epochs trained."""
    loss = client.get_metric_history(run_id, "val/loss")
    ic = {m.step: m.value for m in client.get_metric_history(run_id, "val/ic")}
    best = min(loss, key=lambda m: m.value)
    return dict(val_ic=ic.get(best.step, float("nan")), val_loss=best.value,
                best_epoch=sorted(m.step for m in loss).index(best.step) + 1, epochs=len(loss))


def train_all(store: str, seeds: list[int], extra: list[str], test: pl.DataFrame,
              jobs: int = 1) -> dict[str, list[dict]]:
    """Every (seed, configuration), `jobs` training processes at a time (one thread each)."""
    client = MlflowClient(URI)

    def one(seed: int, name: str) -> dict:
        run_id = train_one(store, name, seed, extra)
        metrics = client.get_run(run_id).data.metrics
        row = dict(seed=seed, run_id=run_id, ic=metrics["test/ic"], rank_ic=metrics["test/rank_ic"],
                   **validation(client, run_id), found=component_corr(run_id, test))
        print(f"{name:<12} seed={seed} val/ic={row['val_ic']:.4f} test/ic={row['ic']:.4f} run_id={run_id}", flush=True)
        return row

    tasks = [(seed, name) for seed in seeds for name in CONFIGS]
    with ThreadPoolExecutor(jobs) as pool:
        rows = list(pool.map(lambda task: one(*task), tasks))
    return {name: [row for (_, n), row in zip(tasks, rows) if n == name] for name in CONFIGS}


def tune(store: str, tag: str, configs: list[str], seeds: list[int], extra: list[str]) -> None:
    """Validation IC only: append one row per (configuration, seed) to tuning.json, rewrite tuning.md."""
    client, path, rows = MlflowClient(URI), HERE / "tuning.json", []
    for seed in seeds:
        for name in configs:
            run_id = train_one(store, name, seed, extra, prefix=f"tune_{tag}")
            row = dict(tag=tag, config=name, seed=seed, overrides=" ".join(extra), run_id=run_id,
                       **validation(client, run_id))
            rows = [*(json.loads(path.read_text()) if path.exists() else []), row]  # others may tune at once
            print(f"{tag} {name} seed={seed} val/ic={row['val_ic']:.4f} epoch={row['best_epoch']}/"
                  f"{row['epochs']}", flush=True)
            path.write_text(json.dumps(rows, indent=1))
    (HERE / "tuning.md").write_text(tuning_table(rows))


def tuning_table(rows: list[dict]) -> str:
    lines = ["Validation IC of the settings tried (`--tune`; the test split is never read). `val/ic` is taken at",
             "the epoch kept (best validation loss). Overrides are relative to conf/experiment/modality_ablation.yaml.",
             "", "| setting | configuration | seed | overrides | val IC | epoch kept / trained |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['tag']} | {r['config']} | {r['seed']} | `{r['overrides'] or '-'}` | {r['val_ic']:.4f} | "
              f"{r['best_epoch']}/{r['epochs']} |" for r in rows]
    return "\n".join(lines) + "\n"


def mean_sd(values: list[float], sign: str = "") -> str:
    return f"{statistics.mean(values):{sign}.4f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.4f}"


def table(runs: dict, oracle: dict, oracle_json: dict, command: str) -> str:
    """One row per configuration: means ± sd over seeds; drops are paired by seed (all - without)."""
    full = {r["seed"]: r["ic"] for r in runs["all"]}
    lines = [f"Command: `{command}`", "",
             f"Oracle IC of every component on the test anchors: **{oracle['all']:.4f}** "
             f"(oracle.json, whole sample: {oracle_json['all']['ic']:.4f}). IC = mean daily cross-sectional "
             f"Pearson correlation (test/ic). Seeds: {sorted(full)}; ± is the sd over seeds.", "",
             "| configuration | val IC | test IC | test IC per seed | % of full oracle | drop vs all (paired) | "
             "oracle IC of the components it can see | planted share (oracle drop) | "
             + " | ".join(f"corr. with {k}" for k in COMPONENTS) + " |", "|---" * (8 + len(COMPONENTS)) + "|"]
    for name in CONFIGS:
        ics = [r["ic"] for r in runs[name]]
        drop = "" if name == "all" else mean_sd([full[r["seed"]] - r["ic"] for r in runs[name]], "+")
        share = "" if name == "all" else f"{oracle['all'] - oracle[name]:+.4f}"
        found = [statistics.mean(r["found"][k] for r in runs[name]) for k in COMPONENTS]
        lines.append(f"| {name} | {mean_sd([r['val_ic'] for r in runs[name]])} | {mean_sd(ics)} | "
                     f"{', '.join(f'{x:.3f}' for x in ics)} | {100 * statistics.mean(ics) / oracle['all']:.0f}% | "
                     f"{drop} | {oracle[name]:.4f} | {share} | " + " | ".join(f"{c:.2f}" for c in found) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--tune", help="record the validation IC of these overrides under this name")
    parser.add_argument("--configs", default="all", help="with --tune, comma-separated: all,without_price,...")
    parser.add_argument("--jobs", type=int, default=1, help="training processes at once (one thread each)")
    args, extra = parser.parse_known_args()
    os.chdir(ROOT)
    store = build_market()
    if args.tune:
        by_slug = {slug(n): n for n in CONFIGS}
        return tune(store, args.tune, [by_slug[c] for c in args.configs.split(",")], args.seeds, extra)
    test = components(store, extra)
    oracle = oracle_ics(test)
    runs = train_all(store, args.seeds, extra, test, args.jobs)
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
            mlflow.log_metric(f"{key}/val_ic", statistics.mean(r["val_ic"] for r in runs[name]))
            mlflow.log_metric(f"{key}/oracle_ic", oracle[name])
        mlflow.log_text(text, "results.md")
    print(text)


if __name__ == "__main__":
    main()
