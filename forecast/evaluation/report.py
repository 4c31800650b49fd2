"""The tables train and evaluate print (and log as `report.txt`): the model beside its baselines."""
from __future__ import annotations

import math

from forecast.evaluation.scoring import verdict

FEW_TICKERS = 5  # a test cross-section smaller than this gets a note under the table
COLUMNS = ["mse", "mae", "dir_acc", "ic", "rank_ic", "icir", "sharpe", "ann_return", "max_drawdown", "turnover",
           "info_ratio"]


def point_report(results: dict[str, dict[str, float]], per_session: float | None = None) -> str:
    """train's table on the test split, and a note when a baseline has the lower MSE or when the test
    sessions hold too few tickers (`per_session`, the median) for a cross-sectional IC to say much."""
    keys = list(results["model"])
    lines = [f"{'test split':<12}" + "".join(f"{k:>12}" for k in keys)]
    for name, metrics in results.items():
        lines.append(f"{name:<12}" + "".join(f"{metrics[k]:>12.6g}" for k in keys))
    best_mse = min(results, key=lambda n: results[n]["mse"])
    if best_mse != "model":
        lines.append(f"note: the model's test MSE is not better than the '{best_mse}' baseline")
    if per_session is not None and 1 < per_session < FEW_TICKERS:
        lines.append(f"note: {per_session:g} tickers per test session (median): a cross-sectional IC of so few is "
                     "coarse (of two it is +1 or -1 every session); judge by mse and dir_acc, or one ticker's block IC")
    return "\n".join(lines)


def walk_forward_report(results: dict[str, dict[str, float]], skipped: dict[str, str], level: float = 0.95) -> str:
    head = {"ann_return": "ann_ret", "max_drawdown": "max_dd", "info_ratio": "info_r"}
    lines = ["walk-forward " + "".join(f"{head.get(k, k):>10}" for k in COLUMNS)]
    lines += [f"{n:<13}" + "".join(f"{r[k]:>10.4g}" for k in COLUMNS) for n, r in results.items()]
    pct = f"{level:.0%}"
    lines.append(f"\n{'significance':<13}{'ic ' + pct + ' CI':>22}{'sharpe ' + pct + ' CI':>22}"
                 f"{'p(<rw mse)':>12}{'p(model<)':>12}")
    for n, r in results.items():
        lines.append(f"{n:<13}{_interval(r['ic_low'], r['ic_high']):>22}"
                     f"{_interval(r['sharpe_low'], r['sharpe_high']):>22}{r['dm_rw_p']:>12.3g}"
                     f"{r.get('dm_model_p', math.nan):>12.3g}")
    lines.append("p(<rw mse): Diebold-Mariano p-value that this forecast's MSE is below the random walk's; "
                 "p(model<): that the model's MSE is below this baseline's")
    lines += [f"note: baseline '{n}' skipped: {why}" for n, why in skipped.items()]
    lines += _quantile_lines(results["model"])
    return "\n".join(lines + [f"verdict: {line}" for line in verdict(results)])


def _quantile_lines(m: dict[str, float]) -> list[str]:
    """The quantile head's interval coverage and pinball loss beside the trailing historical quantiles'."""
    if "q_coverage" not in m:
        return []
    return [f"\n{'quantiles':<13}{'coverage':>10}{'pinball':>12}",
            f"{'model':<13}{m['q_coverage']:>10.3f}{m['q_pinball']:>12.4g}",
            f"{'trailing':<13}{m['hq_coverage']:>10.3f}{m['hq_pinball']:>12.4g}",
            "coverage: share of outcomes inside the outer quantiles (0.1-0.9: 0.8 if calibrated); "
            "trailing: quantiles of the last 252 realised returns"]


def _interval(low: float, high: float) -> str:
    return f"[{low:.3g}, {high:.3g}]"
