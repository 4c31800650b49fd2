"""`bench backbones`: training throughput, peak memory and step latency of every backbone.

Each (backbone, length) runs in a fresh process so its peak resident memory is its own. Records go
to a JSON list (`out`) and a Markdown table beside it. Standalone:
    python -c "from omegaconf import OmegaConf; from forecast.model.backbones.bench import backbones; \
backbones(OmegaConf.load('conf/bench_backbones.yaml'))"
"""
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf


def build(label: str, spec: dict, d_model: int, n_layers: int) -> torch.nn.Module:
    """The backbone `label` from conf/model/backbone/<config>.yaml with spec's overrides."""
    spec = {k: v for k, v in spec.items() if k != "max_length"}
    if label == "mambapy":  # external reference: the mamba.py package's block with its pscan
        from mambapy.mamba import Mamba, MambaConfig

        return Mamba(MambaConfig(d_model=d_model, n_layers=n_layers))
    from hydra.utils import instantiate

    from forecast.resources import conf_dir

    path = conf_dir() / "model" / "backbone" / f"{spec.pop('config', label)}.yaml"
    if not path.exists():
        raise ValueError(f"bench_backbones.yaml: backbone {label!r} has no config {path.name}")
    cfg = OmegaConf.merge({"model": {"d_model": d_model}}, {"b": OmegaConf.load(path)},
                          {"b": {"n_layers": n_layers, **spec}})
    return instantiate(cfg.b)


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak():
    """Reset the peak resident set (VmHWM) so it measures only what follows (Linux)."""
    Path("/proc/self/clear_refs").write_text("5")


def _setup(cfg: dict):
    from forecast.allocator import retain_freed_memory

    retain_freed_memory()  # as the CLI does for training
    torch.manual_seed(0)
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])


def measure_train(label: str, spec: dict, length: int, cfg: dict) -> dict:
    """Forward+backward of one batch: best time over repeats (wall and CPU), and peak extra memory."""
    _setup(cfg)
    model = build(label, spec, cfg["d_model"], cfg["n_layers"])
    x = torch.randn(cfg["batch"], length, cfg["d_model"])
    model(x[:, :8]).sum().backward()  # warm-up: kernel build, allocator
    base = _rss_mb("VmRSS")
    _reset_peak()
    load, times = os.getloadavg()[0], []
    for _ in range(cfg["repeats"] + 1):
        model.zero_grad(set_to_none=True)
        start, cpu = time.perf_counter(), time.process_time()
        model(x).sum().backward()
        times.append((time.perf_counter() - start, time.process_time() - cpu))
        if times[-1][0] > cfg["max_seconds"]:
            break
    wall, cpu = min(times[1:] or times)  # the first run is a warm-up unless it was too slow to repeat
    tokens = cfg["batch"] * length
    return {"backbone": label, "length": length, "mode": "train", "seconds": wall, "tokens_per_s": tokens / wall,
            "tokens_per_cpu_s": tokens / cpu, "peak_mem_mb": _rss_mb("VmHWM") - base,
            "threads": torch.get_num_threads(), "load_avg": load}


def _timed(fn, n: int) -> float:
    """Median seconds of n calls."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[n // 2]


@torch.inference_mode()
def measure_step(label: str, spec: dict, cfg: dict) -> dict:
    """One new bar through `step` after `step_history` bars, against re-running the whole window.

    Both on one thread: at one bar per call, intra-op threads only add synchronisation.
    """
    _setup(cfg)
    torch.set_num_threads(1)
    model = build(label, spec, cfg["d_model"], cfg["n_layers"]).eval()
    L = cfg["step_history"]
    x = torch.randn(cfg["batch"], L + 1, cfg["d_model"])
    state = None
    for t in range(L):
        _, state = model.step(x[:, t], state)
    step_s = _timed(lambda: model.step(x[:, L], state), 21)
    window_s = _timed(lambda: model(x), 3)
    return {"backbone": label, "length": L, "mode": "step", "step_ms": 1e3 * step_s,
            "window_ms": 1e3 * window_s, "step_speedup": window_s / step_s,
            "tokens_per_s": cfg["batch"] / step_s, "peak_mem_mb": None}


def _in_fresh_process(fn, *args) -> dict:
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def _fmt(n: float) -> str:
    return f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def markdown(records: list[dict]) -> str:
    """Tables: tokens/s (x Transformer), peak memory, and step latency."""
    train = [r for r in records if r["mode"] == "train"]
    lengths = sorted({r["length"] for r in train})
    labels = list(dict.fromkeys(r["backbone"] for r in train))
    cell = {(r["backbone"], r["length"]): r for r in train}
    head = "| backbone | " + " | ".join(f"L={n}" for n in lengths) + " |\n|---" + "|---" * len(lengths) + "|\n"
    speed, mem = head, head
    for b in labels:
        rs = [cell.get((b, n)) for n in lengths]
        speed += f"| {b} | " + " | ".join(
            "—" if r is None else f"{_fmt(r['tokens_per_s'])} ({r['vs_transformer']:.2f}x)" for r in rs) + " |\n"
        mem += f"| {b} | " + " | ".join("—" if r is None else f"{r['peak_mem_mb']:.0f}" for r in rs) + " |\n"
    cpu = head
    for b in labels:
        rs = [cell.get((b, n)) for n in lengths]
        cpu += f"| {b} | " + " | ".join("—" if r is None else _fmt(r["tokens_per_cpu_s"]) for r in rs) + " |\n"
    out = (f"Forward+backward tokens/s, wall clock (ratio to the Transformer):\n\n{speed}\n"
           f"Tokens per CPU-second (less sensitive to other load on the machine):\n\n{cpu}\n"
           f"Peak extra memory, MB:\n\n{mem}")
    steps = [r for r in records if r["mode"] == "step"]
    if steps:
        out += f"\nOne new bar after {steps[0]['length']} bars: `step` against re-running the window:\n\n"
        out += "| backbone | step ms | window ms | speed-up |\n|---|---|---|---|\n"
        out += "".join(f"| {r['backbone']} | {r['step_ms']:.2f} | {r['window_ms']:.0f} | "
                       f"{r['step_speedup']:.0f}x |\n" for r in steps)
    return out


def missing_references(specs: dict) -> dict[str, str]:
    """{label: reason} for the external references that are not installed (the `[bench]` extra)."""
    import importlib.util

    if "mambapy" in specs and importlib.util.find_spec("mambapy") is None:
        return {"mambapy": "the mamba.py package is not installed (pip install -e \".[bench]\")"}
    return {}


def backbones(cfg: DictConfig) -> list[dict]:
    """Run the benchmark described by conf/bench_backbones.yaml; write JSON + Markdown; return records."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    out = Path(plain["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    jobs = [(measure_train, label, spec, n) for label, spec in plain["backbones"].items()
            for n in plain["lengths"] if n <= spec.get("max_length", float("inf"))]
    if plain["step_history"]:
        jobs += [(measure_step, label, spec) for label, spec in plain["backbones"].items() if label != "mambapy"]
    skipped = missing_references(plain["backbones"])
    for label, why in skipped.items():
        print(f"note: {label} skipped: {why}", flush=True)
    jobs = [job for job in jobs if job[1] not in skipped]
    records = []
    for fn, *args in jobs:
        records.append(_in_fresh_process(fn, *args, plain))
        print(json.dumps(records[-1]), flush=True)
        out.write_text(json.dumps(records, indent=1))  # partial results survive an interrupted run
    base = {r["length"]: r["tokens_per_s"] for r in records if r["backbone"] == "transformer" and r["mode"] == "train"}
    for r in records:
        if r["mode"] == "train":
            r["vs_transformer"] = r["tokens_per_s"] / base.get(r["length"], float("nan"))
    out.write_text(json.dumps(records, indent=1))
    table = markdown(records)
    out.with_suffix(".md").write_text(table)
    print(table)
    return records
