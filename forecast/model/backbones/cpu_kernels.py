"""Fused CPU kernels for the Mamba blocks, built once with the system C compiler.

- the Mamba-1 selective scan with delta bias, softplus, D skip and silu(z) gate fused, like
  mamba_ssm's CUDA kernel: each channel's state (N floats) stays in registers and time is walked
  sequentially, so no (B, L, D, N) tensor is ever materialised. Forward saves the state at the
  start of every `chunk` positions; backward recomputes one chunk at a time from there.
- the depthwise causal conv (+ silu) in channels-last layout, like causal-conv1d.
The C source below is compiled with `cc -O3 -march=native -ffast-math` (glibc's libmvec
vectorises expf) into a cache folder and called through ctypes, channels split across threads
(ctypes releases the GIL). `available()` is False without a compiler: callers then use PyTorch.
"""
import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import torch

from forecast.model.backbones.csrc import SOURCE

FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp-simd", "-fPIC"]
# Linked WITHOUT -ffast-math: linking with it adds gcc's crtfastmath.o, whose constructor turns on
# flush-to-zero for the whole process the moment the library loads (the kernels set FTZ themselves
# and restore the caller's state on return).
LINK = ["-shared"]
_P, _I = ctypes.c_void_p, ctypes.c_int
SIGNATURES = {"scan_fwd": [_P] * 11 + [_I] * 8, "scan_bwd": [_P] * 18 + [_I] * 8,
              "conv_fwd": [_P] * 4 + [_I] * 7, "conv_bwd": [_P] * 7 + [_I] * 7}


def _cache_dir() -> Path:
    path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "forecast"
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError:
        return Path(tempfile.gettempdir())


def _cpu_id() -> str:
    """What `-march=native` builds for: the CPU model and feature flags (Linux), else the machine type.
    Part of the cache key, so a home folder shared by different CPUs never loads another's build."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    return "|".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags", "Features"))}))


@lru_cache(maxsize=1)
def _library():
    """Compile (once per source, flags and CPU) and load the kernels; None when no compiler works."""
    key = hashlib.sha256((SOURCE + " ".join(FLAGS) + " | link " + " ".join(LINK) + " | cpu " + _cpu_id()).encode())
    key = key.hexdigest()[:16]
    lib = _cache_dir() / f"forecast_kernels_{key}.so"
    if not lib.exists():
        src, tmp = lib.with_suffix(f".{os.getpid()}.c"), lib.with_suffix(f".{os.getpid()}.tmp")
        src.write_text(SOURCE)
        obj, cc = src.with_suffix(".o"), os.environ.get("CC", "cc")
        try:
            subprocess.run([cc, *FLAGS, "-c", str(src), "-o", str(obj)], check=True, capture_output=True)
            subprocess.run([cc, *LINK, str(obj), "-o", str(tmp), "-lm"], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as err:
            warnings.warn(f"no CPU kernels (C compiler failed: {err}); Mamba uses the slower PyTorch scan",
                          stacklevel=2)
            return None
        finally:
            src.unlink(missing_ok=True)
            obj.unlink(missing_ok=True)
        tmp.replace(lib)  # atomic: a concurrent build never loads a half-written file
    dll = ctypes.CDLL(str(lib))
    for name, args in SIGNATURES.items():
        getattr(dll, name).argtypes = args
    return dll


def available() -> bool:
    return _library() is not None


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max(1, torch.get_num_threads()))


def _workers(channels: int) -> int:
    return max(1, min(torch.get_num_threads(), channels // 8))


def _run(fn, channels: int):
    """fn(worker, c0, c1) on one channel range per worker thread."""
    n = _workers(channels)
    ranges = [(channels * i // n, channels * (i + 1) // n) for i in range(n)]
    if n == 1:
        fn(0, 0, channels)
    else:
        list(_pool().map(lambda w: fn(w, *ranges[w]), range(n)))


def _p(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


class FusedScan(torch.autograd.Function):
    """y = (C h + D u) * silu(z), h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, dt = softplus(delta + bias).

    Channels-last: u, delta, z (B, L, E); A (E, N); B, C (B, L, N); D, bias (E,) or None.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, bias, softplus, chunk):
        (Bsz, L, E), N = u.shape, A.shape[1]
        y, last = torch.empty_like(u), u.new_empty(Bsz, E, N)
        starts = u.new_empty(Bsz, -(-L // chunk), E, N)  # state entering each chunk
        lib = _library()
        _run(lambda w, d0, d1: lib.scan_fwd(_p(u), _p(delta), _p(z), _p(A), _p(B), _p(C), _p(D), _p(bias),
                                            _p(y), _p(starts), _p(last), Bsz, L, E, N, chunk, int(softplus),
                                            d0, d1), E)
        ctx.save_for_backward(u, delta, A, B, C, D, z, bias, starts)
        ctx.softplus, ctx.chunk = softplus, chunk
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    def backward(ctx, dy, _dlast):
        u, delta, A, B, C, D, z, bias, starts = ctx.saved_tensors
        (Bsz, L, E), N = u.shape, A.shape[1]

        def first(t):  # (B, L, E) -> (B, E, L) contiguous: the backward walks one channel at a time
            return None if t is None else t.transpose(1, 2).contiguous()

        u, delta, z, dy = first(u), first(delta), first(z), first(dy)
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)  # (B, E, L)
        dz = None if z is None else torch.empty_like(z)
        dA, dD, dbias = torch.zeros_like(A), u.new_zeros(E), u.new_zeros(E)
        dB, dC = u.new_zeros(2, _workers(E), Bsz, L, N)  # per-worker partial sums over channels
        lib = _library()
        _run(lambda w, d0, d1: lib.scan_bwd(
            _p(u), _p(delta), _p(z), _p(A), _p(B), _p(C), _p(D), _p(bias), _p(starts), _p(dy),
            _p(du), _p(ddelta), _p(dz), _p(dA), _p(dB[w]), _p(dC[w]), _p(dD), _p(dbias),
            Bsz, L, E, N, ctx.chunk, int(ctx.softplus), d0, d1), E)
        def last(t):  # back to (B, L, E) views
            return None if t is None else t.transpose(1, 2)

        return (last(du), last(ddelta), dA, dB.sum(0), dC.sum(0), None if D is None else dD, last(dz),
                None if bias is None else dbias, None, None)


class CausalConv(torch.autograd.Function):
    """Depthwise causal conv of x (B, L, C) with weight (C, K) and bias (C,), then silu if asked."""

    @staticmethod
    def forward(ctx, x, weight, bias, silu):
        (Bsz, L, Ch), K = x.shape, weight.shape[1]
        y, lib, weight = torch.empty_like(x), _library(), weight.t().contiguous()  # (K, C)
        _run(lambda w, c0, c1: lib.conv_fwd(_p(x), _p(weight), _p(bias), _p(y), Bsz, L, Ch, K, int(silu),
                                            c0, c1), Ch)
        ctx.save_for_backward(x, weight, bias)
        ctx.silu = silu
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors  # weight (K, C)
        (Bsz, L, Ch), K = x.shape, weight.shape[0]
        dx, dw, db = torch.zeros_like(x), torch.zeros_like(weight), torch.zeros_like(bias)  # w, dw (K, C)
        lib, dy = _library(), dy.contiguous()
        _run(lambda w, c0, c1: lib.conv_bwd(_p(x), _p(weight), _p(bias), _p(dy), _p(dx), _p(dw), _p(db),
                                            Bsz, L, Ch, K, int(ctx.silu), c0, c1), Ch)
        return dx, dw.t(), db, None
