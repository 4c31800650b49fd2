"""`python -m forecast compress model=<run id | runs:/.. | models:/name@alias> device=auto|<profile>`:
shrink a trained model to a device's budget and log the result as a new MLflow run tagged with the
teacher's run.

1. The device (device.py) and the teacher: its run, model, logged config and data state; the data it
   was trained on is rebuilt from that config (same store, same split dates, same normalisation).
2. The reference: the teacher exported to ONNX (its size), timed in torch at the device's threads,
   scored on validation and test.
3. The search (search.py) over pruning, distillation and int8, judged on validation only.
4. The report (report.py), the MLflow run (the pick's ONNX file, a `model` that `predict` loads, the
   data state, the table) and, when the budget was met, a registry version with the device as alias.
The last line is `compressed=<onnx file> run_id=.. size_ratio=.. speedup=.. ic_ratio=..`; the exit code
is 1 when nothing meets the budget (the closest candidate is reported, nothing is registered).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from forecast.compress import accuracy, distill, report, search
from forecast.compress.device import Device, resolve
from forecast.compress.export import export, exportable
from forecast.compress.flops import flops_per_forecast
from forecast.compress.latency import median_of
from forecast.compress.prune import n_params
from forecast.errors import UserError


@dataclass
class Context:
    cfg: DictConfig
    device: Device
    teacher: torch.nn.Module
    teacher_cfg: DictConfig
    teacher_run: str
    dm: object
    state: dict
    workdir: Path
    cache: Path | None
    val: accuracy.Split = None
    test: accuracy.Split = None
    inputs: Path = None
    teacher_train: torch.Tensor = None
    ref: search.Reference = None
    teacher_params: int = 0
    teacher_flops: float = 0.0
    bar: object = None
    memo: dict = field(default_factory=dict)  # trained models of this search, by recipe key


def compress(cfg: DictConfig) -> int:
    from forecast.tracking import runs

    device = resolve(OmegaConf.to_container(cfg.device, resolve=True))
    _, _, run_id = runs.resolve_model(cfg.logger.tracking_uri, str(cfg.model_ref))
    teacher_cfg, teacher, state = load_teacher(run_id, cfg)
    print(device.describe())
    dm = _data(teacher_cfg)
    experiment_id = runs.connect(cfg.logger)
    tags = {"forecast.source_run": run_id, "forecast.source_model": str(cfg.model_ref), "forecast.device": device.name}
    with runs.open_run(cfg.get("run_name") or f"compress-{device.name}", tags=tags) as new_run:
        runs.log_config(cfg, {**device.as_params(), "source_run": run_id})
        workdir = Path(cfg.out) / new_run
        workdir.mkdir(parents=True, exist_ok=True)
        ctx = Context(cfg, device, teacher, teacher_cfg, run_id, dm, state, workdir,
                      Path(cfg.cache) / run_id if cfg.cache else None)
        reference(ctx)
        cands = search.run(ctx)
        code, lines = finish(ctx, cands, new_run)
    print(runs.footer(cfg.logger.tracking_uri, experiment_id, new_run).splitlines()[0])
    print(lines)
    return code


def load_teacher(run_id: str, cfg: DictConfig):
    """(logged config, model, data state) of the teacher run; a model that cannot be exported is an error."""
    from forecast.tracking import runs

    teacher_cfg = runs.stored_config(run_id)
    if cfg.data.get("store"):
        teacher_cfg.data.store = str(cfg.data.store)
    teacher = runs.load_model(run_id).eval()
    if hasattr(teacher, "members"):
        raise UserError(f"model: a seed ensemble of {len(teacher.members)} networks (model.ensemble); compress "
                        "takes one network: train it with model.ensemble=1")
    if exportable(teacher) is None:
        raise UserError(f"model: {type(teacher.backbone).__name__} declares no ONNX export (EXPORTABLE); "
                        "nothing to compress it into")
    return teacher_cfg, teacher, runs.load_predict_state(run_id)


def _data(teacher_cfg: DictConfig):
    from forecast.training.train import build_data

    return build_data(teacher_cfg)


def reference(ctx: Context) -> None:
    """The teacher's numbers every candidate is judged against, and the data the search reads."""
    ctx.val, ctx.test = accuracy.split(ctx.dm, "val"), accuracy.split(ctx.dm, "test")
    ctx.inputs = ctx.workdir / "cross_section.npz"
    import numpy as np

    np.savez(ctx.inputs, **accuracy.cross_section(ctx.val, ctx.device.tickers))
    ctx.teacher_train = distill.teacher_targets(ctx.teacher, ctx.dm)
    onnx_file = export(ctx.teacher, ctx.val.batches[0], ctx.workdir / "teacher.onnx", ctx.state)
    torch.save(ctx.teacher, ctx.workdir / "teacher.pt")
    lat = ctx.cfg.latency
    latency = median_of(3, "torch", ctx.workdir / "teacher.pt", ctx.inputs, ctx.device.threads, int(lat.repeats),
                        int(lat.warmup))
    val_scores, test_scores = accuracy.torch_scores(ctx.teacher, ctx.val), accuracy.torch_scores(ctx.teacher, ctx.test)
    ctx.ref = search.Reference(onnx_file.stat().st_size, latency, accuracy.val_ic(ctx.val, val_scores),
                               val_scores, test_scores, accuracy.test_metrics(ctx.test, test_scores, test_scores))
    ctx.teacher_params = n_params(ctx.teacher)
    ctx.teacher_flops = flops_per_forecast(ctx.teacher, ctx.val.batches[0])
    print(f"teacher {ctx.teacher_run}: {type(ctx.teacher.backbone).__name__}, {ctx.teacher_params:,} parameters, "
          f"{ctx.ref.bytes / 1e3:.1f} kB as ONNX, p50 {latency['p50_ms']:.2f} ms (torch, {ctx.device.threads} "
          f"thread(s), {ctx.device.tickers} tickers), val IC {ctx.ref.val_ic:.4f}, test IC {ctx.ref.test['ic']:.4f}")
    if ctx.ref.val_ic <= 0:
        print(f"warning: the teacher's validation IC ({ctx.ref.val_ic:.4f}) is not positive: it has no skill to keep, "
              "so the IC budget only bounds a loss, and a student picked by validation IC may be a different model, "
              "not a smaller teacher; read corr_teacher in the table")


def finish(ctx: Context, cands: list, run_id: str) -> tuple[int, str]:
    """Print and log the report; log (and register) the pick. Returns (exit code, last lines)."""
    from forecast.tracking import review, runs

    chosen = search.pick(cands)
    best = chosen or search.closest(cands)
    frame = report.table(ctx, cands)
    text = report.markdown(frame)
    verdict = report.why(ctx, chosen, cands) if chosen else report.closest_text(ctx, best)
    print(text)
    print(verdict)
    runs.log_text(f"{ctx.device.describe()}\n\n{text}\n\n{verdict}\n", "compress/report.md")
    review.describe(f"**compress**: {verdict}\n\n{ctx.device.describe()}\n\n{text}\n")  # the run's Overview
    runs.log_tables({"compress/candidates.csv": frame})
    runs.set_tags({"forecast.compress.met": str(chosen is not None).lower(), "forecast.compress.pick": best.name})
    runs.log_metrics(_metrics(ctx, best))
    path = None
    if chosen is not None:
        path = ctx.workdir / "model.onnx"
        shutil.copyfile(chosen.path, path)
        _log_model(ctx, path)
    return (0 if chosen else 1), report.summary(ctx, best, run_id, str(path) if path else None)


def _metrics(ctx: Context, c) -> dict[str, float]:
    ref = ctx.ref
    return {"compress/size_ratio": ref.bytes / c.bytes, "compress/speedup": ref.latency["p50_ms"] / c.latency["p50_ms"],
            "compress/ic_ratio": report.ratio(c.test["ic"], ref.test["ic"]), "compress/bytes": float(c.bytes),
            "compress/p50_ms": c.latency["p50_ms"], "compress/p95_ms": c.latency["p95_ms"],
            "val/ic": c.val_ic, **{f"test/{k}": v for k, v in c.test.items()}}


def _log_model(ctx: Context, path: Path) -> None:
    """The ONNX file, the data state predict reads, and a `model` predict loads; registered when asked."""
    from forecast.compress.runtime import OnnxForecaster
    from forecast.tracking import registry, runs

    runs.log_file(path, "compressed")
    runs.log_text(json.dumps(ctx.state), "predict/state.json")
    uri = runs.log_model(OnnxForecaster(path.read_bytes(), ctx.device.threads), None)  # inputs: a dict, no example
    if ctx.cfg.register:
        alias = ctx.cfg.registry.alias or ctx.device.name
        print(registry.register(ctx.cfg.registry.model, alias, uri, {"source_run": ctx.teacher_run,
                                                                      "device": ctx.device.name}))
