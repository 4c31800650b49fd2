"""The compression report: one row per candidate beside the teacher, the pick and why, and the
machine-readable last line `compressed=<path> size_ratio=.. speedup=.. ic_ratio=..`.

Ratios are against the teacher as users run it today: size against its fp32 ONNX file, speed against
its torch forward at the device's threads (p50 of warm calls, each runtime in its own process), IC on
the teacher's test split against the teacher's test IC. `vs_onnx` is the speed-up against the
teacher's own fp32 graph in onnxruntime: what compression adds beyond leaving eager torch. The search
itself read only validation IC.
"""
from __future__ import annotations

import math

import polars as pl

COLUMNS = ["candidate", "kB", "size_x", "params", "MFLOPs", "p50_ms", "p95_ms", "speedup", "vs_onnx", "val_ic",
           "test_ic", "test_ic_low", "test_ic_high", "ic_ratio", "dir_acc", "mse", "corr_teacher", "parity", "pareto",
           "meets"]


def table(ctx, cands) -> pl.DataFrame:
    """The teacher (torch) first, then every candidate in search order."""
    ref = ctx.ref
    onnx = next((c.latency["p50_ms"] for c in cands if c.recipe.kind == "teacher" and not c.int8), float("nan"))
    rows = [dict(candidate="teacher (torch fp32)", kB=ref.bytes / 1e3, size_x=1.0, params=ctx.teacher_params,
                 MFLOPs=ctx.teacher_flops / 1e6, p50_ms=ref.latency["p50_ms"], p95_ms=ref.latency["p95_ms"],
                 speedup=1.0, vs_onnx=onnx / ref.latency["p50_ms"], val_ic=ref.val_ic, test_ic=ref.test["ic"],
                 test_ic_low=ref.test["ic_low"],
                 test_ic_high=ref.test["ic_high"], ic_ratio=1.0, dir_acc=ref.test["dir_acc"], mse=ref.test["mse"],
                 corr_teacher=1.0, parity=0.0, pareto=False, meets="")]
    for c in cands:
        rows.append(dict(candidate=c.name, kB=c.bytes / 1e3, size_x=ref.bytes / c.bytes, params=c.params,
                         MFLOPs=c.flops / 1e6, p50_ms=c.latency["p50_ms"], p95_ms=c.latency["p95_ms"],
                         speedup=ref.latency["p50_ms"] / c.latency["p50_ms"], vs_onnx=onnx / c.latency["p50_ms"],
                         val_ic=c.val_ic, test_ic=c.test["ic"],
                         test_ic_low=c.test["ic_low"], test_ic_high=c.test["ic_high"],
                         ic_ratio=ratio(c.test["ic"], ref.test["ic"]), dir_acc=c.test["dir_acc"], mse=c.test["mse"],
                         corr_teacher=c.test["corr_teacher"], parity=c.parity, pareto=c.pareto,
                         meets="yes" if c.meets else "no: " + "; ".join(c.misses)))
    return pl.DataFrame(rows, schema_overrides={"meets": pl.Utf8}).select(COLUMNS)


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


def markdown(frame: pl.DataFrame) -> str:
    fmt = {"kB": "{:.1f}", "size_x": "{:.2f}", "params": "{:,}", "MFLOPs": "{:.3f}", "p50_ms": "{:.2f}",
           "p95_ms": "{:.2f}", "speedup": "{:.2f}", "vs_onnx": "{:.2f}", "val_ic": "{:.4f}", "test_ic": "{:.4f}",
           "test_ic_low": "{:.4f}",
           "test_ic_high": "{:.4f}", "ic_ratio": "{:.3f}", "dir_acc": "{:.4f}", "mse": "{:.3e}",
           "corr_teacher": "{:.3f}", "parity": "{:.1e}"}
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.iter_rows(named=True):
        cells = [fmt[k].format(v) if k in fmt and v is not None else str(v) for k, v in row.items()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def why(ctx, chosen, cands) -> str:
    """One sentence: why this candidate, or what the closest one misses."""
    ref, met = ctx.ref, [c for c in cands if c.meets]
    if chosen is None:
        return "nothing meets the budget"
    teacher = (f"{ratio(chosen.val_ic, ref.val_ic):.1%} of the teacher's {ref.val_ic:.4f}" if ref.val_ic > 0 else
               f"the teacher's: {ref.val_ic:.4f}")  # a share of a negative IC means nothing
    return (f"picked {chosen.name}: of the {len(met)} candidate(s) meeting every budget it has the highest "
            f"validation IC ({chosen.val_ic:.4f}, {teacher}); "
            f"{ref.bytes / chosen.bytes:.1f}x smaller and "
            f"{ref.latency['p50_ms'] / chosen.latency['p50_ms']:.1f}x faster than the teacher at "
            f"{ctx.device.threads} thread(s)")


def closest_text(ctx, best) -> str:
    return (f"nothing meets the budget; the closest is {best.name}, which misses: {'; '.join(best.misses)}. "
            "Loosen the budget (budget.*, device.*) or widen the search (search.students)")


def summary(ctx, c, uri: str | None, path: str | None) -> str:
    """The last line; `compressed=none` when nothing met the budget (the closest candidate's numbers)."""
    ref = ctx.ref
    return (f"compressed={path or 'none'} run_id={uri or 'none'} candidate={c.name.replace(' ', '_')} "
            f"size_ratio={ref.bytes / c.bytes:.2f} speedup={ref.latency['p50_ms'] / c.latency['p50_ms']:.2f} "
            f"ic_ratio={ratio(c.test['ic'], ref.test['ic']):.3f} device={ctx.device.name} met={str(c.meets).lower()}")
