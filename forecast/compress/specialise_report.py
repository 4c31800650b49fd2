"""What `specialise` measures, on the full model's test split, and how it is logged.

- Per route (each specialist, the full model as fallback): share of requests, analytic FLOPs per
  request on the very sub-batches the routed model gives it (route.route_flops), IC of its requests,
  correlation with the full model's forecasts there. The router's FLOPs are a row of their own and
  are in the total; compute saved = 1 - routed FLOPs / the full model's on the same requests.
- The served forecasts are those of the routed model's own forward (gather, run, scatter); `parity`
  is their largest difference from the routing replayed from every model's forecasts, which the
  curve uses: IC, correlation and FLOPs against the share served as the threshold moves, beside one
  dense student distilled at the width whose FLOPs come closest to the routed system's average.
- Latency: p50/p95 of warm calls on one daily cross-section of the test split (the session whose
  share served is the median one), the full model and the routed one each in a fresh process at
  `latency.threads` threads (compress/latency.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

from forecast.compress import accuracy
from forecast.compress.flops import flops_per_forecast
from forecast.compress.latency import measure
from forecast.compress.route import FALLBACK, route_at, route_flops
from forecast.compress.specialise import dense_student, routed_scores, routing
from forecast.evaluation.metrics import rank_metrics
from forecast.model.forecaster import NOT_INPUTS

NAN = float("nan")
NO_DENSE = dict(dense_width=0, dense_flops=NAN, dense_ic=NAN, dense_corr_full=NAN)  # dense.widths=[]
NO_LATENCY = dict(latency_day="none", latency_tickers=0, latency_day_served=NAN, full_p50_ms=NAN, full_p95_ms=NAN,
                  routed_p50_ms=NAN, routed_p95_ms=NAN, speedup=NAN)  # latency.enabled=false


@dataclass
class Result:
    routes: pl.DataFrame
    curve: pl.DataFrame
    totals: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)


def evaluate(s, routed, workdir: Path) -> Result:
    test, full = s.splits["test"], s.full_scores["test"]
    cand, conf = routing(routed.router, test.batches)
    route = route_at(cand, conf, routed.router.threshold)  # (N,)
    served = accuracy.torch_scores(routed, test)  # the routed model's own forward
    specs = [accuracy.torch_scores(m, test) for m in routed.specialists.values()]
    parity = float(np.abs(served - routed_scores(full, specs, route)).max())
    parts, full_flops = _flops(routed, test.batches)
    n = len(full)
    totals = dict(served_by_specialists=float((route >= 0).float().mean()), fallback=float((route < 0).float().mean()),
                  routed_flops=sum(parts.values()) / n, full_flops=full_flops / n, parity=parity,
                  threshold=float(routed.router.threshold), **_accuracy(test, served, full))
    totals["compute_saved"] = 1 - totals["routed_flops"] / totals["full_flops"]
    routes = _routes(routed, test, route, served, full, parts)
    models = [*routed.specialists.items(), ("full", s.full)]
    per_request = {name: _mean_flops(m, test.batches[:8]) for name, m in models}  # the curve's estimate
    curve = _curve(s, routed, cand, conf, specs, per_request, parts["router"] / n)
    totals.update(_dense(s, totals["routed_flops"]) if s.cfg.dense.widths else NO_DENSE)
    totals.update(_latency(s, routed, route, workdir) if s.cfg.latency.enabled else NO_LATENCY)
    return Result(routes, curve, totals)


def _accuracy(test, scores: np.ndarray, full: np.ndarray) -> dict:
    m, f = accuracy.test_metrics(test, scores, full), accuracy.test_metrics(test, full, full)
    return dict(ic=m["ic"], ic_low=m["ic_low"], ic_high=m["ic_high"], full_ic=f["ic"], ic_delta=m["ic"] - f["ic"],
                corr_full=m["corr_teacher"])


def _flops(routed, batches: list[dict]) -> tuple[dict, float]:
    """Total FLOPs by part of the routed model, and of the full model, over every request of `batches`."""
    parts, full = {}, 0.0
    for b in batches:
        for k, v in route_flops(routed, b).items():
            parts[k] = parts.get(k, 0.0) + v
        full += flops_per_forecast(routed.full, b) * len(b["x"])
    return parts, full


def _mean_flops(model, batches: list[dict]) -> float:
    return sum(flops_per_forecast(model, b) * len(b["x"]) for b in batches) / sum(len(b["x"]) for b in batches)


def _subset(test, mask: np.ndarray, scores: np.ndarray, full: np.ndarray) -> tuple[float, float]:
    """IC (per-date cross-sections of the subset) and correlation with the full model on `mask`."""
    if mask.sum() < 3:
        return float("nan"), float("nan")
    frame = test.rows.with_columns(pred=pl.Series(scores * test.scale)).filter(pl.Series(mask))
    corr = np.corrcoef(scores[mask], full[mask])[0, 1] if np.std(full[mask]) > 0 else float("nan")
    return rank_metrics(frame)["ic"], float(corr)


def _routes(routed, test, route, served, full, parts) -> pl.DataFrame:
    n, rows = len(full), []
    rows.append(dict(route="router", share=1.0, MFLOPs=parts["router"] / n / 1e6, ic=None, corr_full=None))
    for (code, _), name in zip(routed.models(), [*routed.specialists, "full"]):
        mask = (route == code).numpy()
        ic, corr = _subset(test, mask, served, full)
        rows.append(dict(route=name if code != FALLBACK else "full (fallback)", share=float(mask.mean()),
                         MFLOPs=parts[name] / max(mask.sum(), 1) / 1e6, ic=ic, corr_full=corr))
    return pl.DataFrame(rows, schema_overrides={"ic": pl.Float64, "corr_full": pl.Float64})


def _curve(s, routed, cand, conf, specs, per_request: dict, router_flops: float) -> pl.DataFrame:
    """IC, correlation and FLOPs per request against the share served, one row per threshold."""
    test, full, rows = s.splits["test"], s.full_scores["test"], []
    names = list(routed.specialists)
    for t in sorted(set(float(x) for x in s.cfg.curve) | {float(routed.router.threshold)}):
        route = route_at(cand, conf, t)
        mixed = routed_scores(full, specs, route)
        shares = [float((route == k).float().mean()) for k in range(len(names))]
        flops = router_flops + sum(sh * per_request[nm] for sh, nm in zip(shares, names)) \
            + float((route < 0).float().mean()) * per_request["full"]
        rows.append(dict(threshold=t, served=sum(shares), ic=accuracy.val_ic(test, mixed),
                         corr_full=float(np.corrcoef(mixed, full)[0, 1]), MFLOPs=flops / 1e6,
                         chosen=t == float(routed.router.threshold)))
    return pl.DataFrame(rows)


def _dense(s, flops: float) -> dict:
    """The dense student whose FLOPs per request come closest to `flops`, distilled and scored."""
    from forecast.compress import distill

    test, full = s.splits["test"], s.full_scores["test"]
    sizes = {}
    for w in s.cfg.dense.widths:
        sizes[int(w)] = _mean_flops(distill.student(s.full_cfg, s.dm, int(w), int(s.cfg.dense.depth), None).eval(),
                                    test.batches[:2])
    width = min(sizes, key=lambda w: abs(np.log(sizes[w] / flops)))
    model = dense_student(s, width)
    m = accuracy.test_metrics(test, accuracy.torch_scores(model, test), full)
    print(f"dense student w{width} d{s.cfg.dense.depth}: {sizes[width] / 1e6:.3f} MFLOPs per request "
          f"(routed {flops / 1e6:.3f}), test IC {m['ic']:.4f}, correlation {m['corr_teacher']:.4f} with the full model")
    return dict(dense_width=width, dense_flops=sizes[width], dense_ic=m["ic"],
                dense_corr_full=m["corr_teacher"])


def _latency(s, routed, route: torch.Tensor, workdir: Path) -> dict:
    """p50/p95 of the full and the routed model on the test session whose share served is the median."""
    test = s.splits["test"]
    frame = test.rows.with_columns(served=pl.Series((route >= 0).numpy())).with_row_index("i")
    days = frame.group_by("date").agg(pl.col("served").mean(), pl.len()).filter(pl.col("len") == pl.col("len").max())
    median = days["served"].median()
    day = days.sort((pl.col("served") - median).abs(), "date")["date"][0]
    idx = frame.filter(pl.col("date") == day)["i"].to_list()
    batch = {k: v for k, v in s.dm.dataset("test")[idx].items() if k not in NOT_INPUTS}
    inputs = workdir / "cross_section.npz"
    np.savez(inputs, **{k: v.numpy() for k, v in batch.items()})
    lat, out = s.cfg.latency, {}
    for name, model in (("full", s.full), ("routed", routed)):
        torch.save(model, workdir / f"{name}.pt")
        out[name] = measure("torch", workdir / f"{name}.pt", inputs, int(lat.threads), int(lat.repeats),
                            int(lat.warmup))
    share = float((routed.router(**batch) >= 0).float().mean())
    return dict(latency_day=str(day), latency_tickers=len(idx), latency_day_served=share,
                full_p50_ms=out["full"]["p50_ms"], full_p95_ms=out["full"]["p95_ms"],
                routed_p50_ms=out["routed"]["p50_ms"], routed_p95_ms=out["routed"]["p95_ms"],
                speedup=out["full"]["p50_ms"] / out["routed"]["p50_ms"])


def markdown(frame: pl.DataFrame) -> str:
    def cell(v):
        return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join(lines)


def text(r: Result) -> str:
    t = r.totals
    return (f"## Routes (test split)\n\n{markdown(r.routes)}\n\n## IC against the share served by specialists\n\n"
            f"{markdown(r.curve)}\n\nfull model: test IC {t['full_ic']:.4f}, {t['full_flops'] / 1e6:.3f} MFLOPs per "
            f"request; routed: test IC {t['ic']:.4f} [{t['ic_low']:.4f}, {t['ic_high']:.4f}], "
            f"{t['routed_flops'] / 1e6:.3f} MFLOPs per request (router and fallback included), correlation "
            f"{t['corr_full']:.4f} with the full model; dense student w{t['dense_width']}: test IC "
            f"{t['dense_ic']:.4f}, {t['dense_flops'] / 1e6:.3f} MFLOPs, correlation {t['dense_corr_full']:.4f}.\n"
            f"Latency on {t['latency_day']} ({t['latency_tickers']} tickers, {t['latency_day_served']:.0%} served "
            f"by specialists): full p50 {t['full_p50_ms']:.2f} / p95 {t['full_p95_ms']:.2f} ms, routed p50 "
            f"{t['routed_p50_ms']:.2f} / p95 {t['routed_p95_ms']:.2f} ms.\n")


def log(s, routed, r: Result) -> None:
    """Tables, metrics, the report, the data state and the routed model (registered when asked)."""
    from forecast.tracking import registry, review, runs, serving

    body = text(r)
    print(body)
    runs.log_text(body, "specialise/report.md")
    review.describe(f"**specialise**: {summary(r)}\n\n{body}")
    runs.log_tables({"specialise/routes.csv": r.routes, "specialise/curve.csv": r.curve})
    runs.log_metrics({f"specialise/{k}": float(v) for k, v in r.totals.items() if isinstance(v, (int, float))})
    runs.log_text(json.dumps(r.totals, default=str), "specialise/totals.json")
    runs.log_model(routed, None)  # the torch module: predict loads it
    uri = serving.log_pyfunc(routed, s.state, s.splits["test"].batches[0])  # what the registered version serves
    if s.cfg.register:
        tags = {"source_run": s.full_run, "kind": "routed"}
        print(registry.register(s.cfg.registry.model, s.cfg.registry.alias, uri, tags))


def summary(r: Result) -> str:
    t = r.totals
    return (f"served_by_specialists={t['served_by_specialists']:.3f} fallback={t['fallback']:.3f} "
            f"compute_saved={t['compute_saved']:.3f} speedup={t['speedup']:.2f} ic_delta={t['ic_delta']:+.4f}")
