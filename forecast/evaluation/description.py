"""The run descriptions train and evaluate write (Markdown, the top of the run's Overview tab in the
MLflow UI): the verdict first, then the model beside its baselines, then what the numbers rest on
(split dates, validation, folds) and where the plots are. The same numbers as the printed report."""
from __future__ import annotations

import math

import polars as pl

from forecast.evaluation.report import COLUMNS
from forecast.evaluation.scoring import verdict
from forecast.tracking.review import markdown_table

POINT_COMPARED = ("mse", "ic", "dir_acc")  # train's verdict: the model is ahead of a baseline on all three


def results_frame(results: dict[str, dict[str, float]], columns: list[str], first: str) -> pl.DataFrame:
    """One row per forecaster (the model first, in bold), one float column per metric."""
    names = [f"**{n}**" if n == "model" else n for n in results]
    values = {c: [float(r.get(c, math.nan)) for r in results.values()] for c in columns}
    return pl.DataFrame({first: names, **values}, schema={first: pl.String, **{c: pl.Float64 for c in columns}})


def point_verdict(results: dict[str, dict[str, float]]) -> list[str]:
    """Per baseline, the metrics of POINT_COMPARED on which the model is not ahead (NaN IC = no skill)."""
    ahead = {"mse": lambda m, b: m < b, "ic": lambda m, b: _nz(m) > _nz(b), "dir_acc": lambda m, b: m > b}
    model, lines, beaten = results["model"], [], 0
    for name, b in results.items():
        if name == "model":
            continue
        lost = [k for k in POINT_COMPARED if not ahead[k](model[k], b[k])]
        if lost:
            lines.append(f"the model is NOT better than '{name}' on the test split: not ahead on {', '.join(lost)}")
        else:
            beaten += 1
    if beaten and beaten == len(results) - 1:
        lines.append(f"the model beats every baseline on {', '.join(POINT_COMPARED)} on the test split")
    return lines + ["one split and one seed: `python -m forecast evaluate` tests significance over walk-forward folds"]


def train_description(results: dict[str, dict[str, float]], frame: pl.DataFrame, validation: dict) -> str:
    """`frame`: the test split's forecasts; `validation`: best loss and IC of the chosen checkpoint."""
    keys = list(results["model"])
    tickers = frame["ticker"].unique().sort().to_list()
    named = ", ".join(tickers) if len(tickers) <= 10 else f"{len(tickers)} tickers"
    return "\n".join([
        "### Verdict", *[f"- {line}" for line in point_verdict(results)], "",
        f"### Test split: {frame['date'].min()} to {frame['date'].max()}, {frame.height} forecasts, {named}",
        markdown_table(results_frame(results, keys, "test split")), "",
        f"Validation (chooses the checkpoint; the test split chooses nothing): best val/loss "
        f"{_num(validation['loss'])}, IC {_num(validation['ic'])}.", "",
        "Plots: `plots/test_predictions.png` (forecast against realised), `plots/rolling_ic.png`; "
        "forecasts: `predictions/test_predictions.parquet`; config: `config.yaml`.",
    ])


def evaluate_description(results: dict[str, dict[str, float]], skipped: dict[str, str], folds: pl.DataFrame,
                         ev, last_date, level: float = 0.95) -> str:
    """The walk-forward verdict, the model beside every baseline, significance, and the folds (the
    fold table of run_folds; `last_date`: the last forecast session)."""
    pct = f"{level:.0%}"
    sig = pl.DataFrame({
        "significance": [f"**{n}**" if n == "model" else n for n in results],
        f"ic {pct} CI": [_interval(r["ic_low"], r["ic_high"]) for r in results.values()],
        f"sharpe {pct} CI": [_interval(r["sharpe_low"], r["sharpe_high"]) for r in results.values()],
        "p(<rw mse)": [_num(r["dm_rw_p"]) for r in results.values()],
        "p(model<)": [_num(r.get("dm_model_p", math.nan)) for r in results.values()],
    })
    window = "expanding" if ev.train_sessions is None else f"sliding, {ev.train_sessions} sessions"
    return "\n".join([
        "### Verdict", *[f"- {line}" for line in verdict(results)],
        *[f"- note: baseline '{n}' skipped: {why}" for n, why in skipped.items()], "",
        f"### Walk-forward: {folds.height} folds, test from {folds['test_start'][0]} to {last_date}",
        f"Retrained every {ev.retrain_every} sessions ({window} train window, {ev.val_sessions} validation "
        f"sessions); `{ev.strategy}` strategy, {ev.cost_bps} bps cost per unit of turnover.", "",
        markdown_table(results_frame(results, COLUMNS, "walk-forward")), "",
        markdown_table(sig), "",
        "p(<rw mse): Diebold-Mariano p-value that the forecast's MSE is below the random walk's; "
        "p(model<): that the model's MSE is below this baseline's.", "",
        "Plots: `plots/cumulative_return.png` (log scale, drawdown below), `plots/rolling_ic.png`, "
        "`plots/fold_metrics.png`, `plots/pred_vs_realised.png`; `folds.csv`, `report.txt`, "
        "`predictions/oos_predictions.parquet`; one nested run per fold and network.",
    ])


def _nz(x: float) -> float:
    return 0.0 if math.isnan(x) else x


def _num(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.4g}"


def _interval(low: float, high: float) -> str:
    return f"[{_num(low)}, {_num(high)}]"
