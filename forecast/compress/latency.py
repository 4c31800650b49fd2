"""Latency of one forecast call (a daily cross-section) at a thread count, each measurement in a
process of its own, so no runtime's threads (onnxruntime spins its workers after a run) steal the
cores of another, and torch's thread pool is sized for that process alone.

    python -m forecast.compress.latency onnx|torch <model file> <inputs.npz> <threads> <repeats> <warmup>

prints one JSON line: p50_ms, p95_ms, mean_ms over `repeats` warm calls. An `onnx` model is run by
onnxruntime alone (this module imports no torch for it); a `torch` model is a module saved with
`torch.save` (the uncompressed teacher, as users run it today).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def measure(kind: str, model: Path, inputs: Path, threads: int, repeats: int, warmup: int,
            timeout: float = 600) -> dict[str, float]:
    """Run the measurement in a fresh interpreter; returns its p50_ms, p95_ms, mean_ms."""
    args = [sys.executable, "-m", "forecast.compress.latency", kind, str(model), str(inputs), str(threads),
            str(repeats), str(warmup)]
    env_threads = {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env={**os.environ, **env_threads})
    if done.returncode:
        raise RuntimeError(f"latency of {model} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_of(times: int, *args) -> dict[str, float]:
    """`measure(*args)` `times` times in fresh processes; the one with the median p50. A reference every
    ratio divides by: one slow measurement on a loaded machine would inflate every speed-up."""
    runs = sorted((measure(*args) for _ in range(times)), key=lambda r: r["p50_ms"])
    return runs[len(runs) // 2]


def _onnx_call(model: str, feeds: dict, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    feeds = {n: feeds[n] for n in names}
    return lambda: sess.run(["score"], feeds)


def _torch_call(model: str, feeds: dict, threads: int):
    import torch

    torch.set_num_threads(threads)
    module = torch.load(model, map_location="cpu", weights_only=False).eval()
    batch = {k: torch.from_numpy(v) for k, v in feeds.items()}

    def call():
        with torch.inference_mode():
            return module(**batch)

    return call


def main(argv: list[str]) -> None:
    kind, model, inputs, threads, repeats, warmup = argv
    feeds = dict(np.load(inputs))
    call = (_onnx_call if kind == "onnx" else _torch_call)(model, feeds, int(threads))
    for _ in range(int(warmup)):
        call()
    times = []
    for _ in range(int(repeats)):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    t = np.array(times)
    print(json.dumps(dict(p50_ms=float(np.percentile(t, 50)), p95_ms=float(np.percentile(t, 95)),
                          mean_ms=float(t.mean()))))


if __name__ == "__main__":
    main(sys.argv[1:])
