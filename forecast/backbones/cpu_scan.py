"""A fused CPU kernel for the Mamba-1 selective scan, built once with the system C compiler.

Like the CUDA kernel, it keeps each channel's state (N floats) in registers and walks time
sequentially, so it never materialises (B, D, L, N) tensors: forward saves the state at the start
of every `chunk` positions, and backward recomputes each chunk from there. The C source below is
compiled with `cc -O3 -march=native -ffast-math` (expf vectorised by glibc's libmvec) into a
cache folder and called through ctypes; channels are split across threads (ctypes releases the
GIL). `available()` is False when no compiler is found; callers then use the PyTorch path.
"""
import ctypes
import hashlib
import os
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import torch

SOURCE = r"""
#include <math.h>
#include <string.h>
#ifdef __SSE__
#include <xmmintrin.h>  /* flush denormals to zero while the kernel runs: they are ~100x slower */
#define FTZ_BEGIN unsigned int csr_ = _mm_getcsr(); _mm_setcsr(csr_ | 0x8040);
#define FTZ_END _mm_setcsr(csr_);
#else
#define FTZ_BEGIN
#define FTZ_END
#endif

/* u, delta, y: (B, E, L); A: (E, N); Bt, Ct: (B, L, N); starts: (B, E, nC, N); last: (B, E, N).
   Channels d in [d0, d1) of every batch element. */
void scan_fwd(const float* u, const float* delta, const float* A, const float* Bt, const float* Ct,
              float* y, float* starts, float* last, int B, int E, int L, int N, int chunk, int d0, int d1) {
  FTZ_BEGIN
  int nC = (L + chunk - 1) / chunk;
  for (int b = 0; b < B; b++) for (int d = d0; d < d1; d++) {
    float h[N]; memset(h, 0, sizeof(h));
    const float* Ad = A + (long)d * N;
    long row = ((long)b * E + d) * L;
    for (int t = 0; t < L; t++) {
      if (t % chunk == 0) memcpy(starts + (((long)b * E + d) * nC + t / chunk) * N, h, sizeof(h));
      float dt = delta[row + t], du = dt * u[row + t], acc = 0.f;
      const float* Bp = Bt + ((long)b * L + t) * N;
      const float* Cp = Ct + ((long)b * L + t) * N;
      #pragma omp simd reduction(+:acc)
      for (int n = 0; n < N; n++) { h[n] = expf(dt * Ad[n]) * h[n] + du * Bp[n]; acc += h[n] * Cp[n]; }
      y[row + t] = acc;
    }
    memcpy(last + ((long)b * E + d) * N, h, sizeof(h));
  }
  FTZ_END
}

/* Gradients for channels [d0, d1): du, ddelta (B, E, L) and dA (E, N) are written for those
   channels only; dB, dC (B, L, N) are this worker's partial sums over its channels. */
void scan_bwd(const float* u, const float* delta, const float* A, const float* Bt, const float* Ct,
              const float* starts, const float* dy, float* du, float* ddelta, float* dA, float* dB,
              float* dC, int B, int E, int L, int N, int chunk, int d0, int d1) {
  FTZ_BEGIN
  int nC = (L + chunk - 1) / chunk;
  float hs[chunk * N], as[chunk * N], g[N], dAd[N];
  for (int d = d0; d < d1; d++) {
    const float* Ad = A + (long)d * N;
    memset(dAd, 0, sizeof(dAd));
    for (int b = 0; b < B; b++) {
      long row = ((long)b * E + d) * L;
      memset(g, 0, sizeof(g));
      for (int c = nC - 1; c >= 0; c--) {
        int t0 = c * chunk, T = (L - t0 < chunk) ? L - t0 : chunk;
        const float* h0 = starts + (((long)b * E + d) * nC + c) * N;
        for (int i = 0; i < T; i++) {          /* recompute this chunk's states */
          int t = t0 + i; float dt = delta[row + t], dut = dt * u[row + t];
          const float* hp = i ? hs + (i - 1) * N : h0;
          const float* Bp = Bt + ((long)b * L + t) * N;
          #pragma omp simd
          for (int n = 0; n < N; n++) { as[i * N + n] = expf(dt * Ad[n]); hs[i * N + n] = as[i * N + n] * hp[n] + dut * Bp[n]; }
        }
        for (int i = T - 1; i >= 0; i--) {      /* walk back through it */
          int t = t0 + i; float dt = delta[row + t], ut = u[row + t], dyt = dy[row + t];
          const float* hp = i ? hs + (i - 1) * N : h0;
          const float* Bp = Bt + ((long)b * L + t) * N;
          const float* Cp = Ct + ((long)b * L + t) * N;
          float* dBp = dB + ((long)b * L + t) * N;
          float* dCp = dC + ((long)b * L + t) * N;
          float gb = 0.f, gdecay = 0.f;
          #pragma omp simd reduction(+:gb, gdecay)
          for (int n = 0; n < N; n++) {
            g[n] += dyt * Cp[n];                /* dL/dh_t */
            dCp[n] += dyt * hs[i * N + n];
            float gd = g[n] * hp[n] * as[i * N + n];   /* dL/d(dt*A) */
            gdecay += gd * Ad[n]; dAd[n] += gd * dt;
            gb += g[n] * Bp[n]; dBp[n] += g[n] * dt * ut;
            g[n] *= as[i * N + n];              /* flows to h_{t-1} */
          }
          du[row + t] = gb * dt; ddelta[row + t] = gdecay + gb * ut;
        }
      }
    }
    memcpy(dA + (long)d * N, dAd, sizeof(dAd));
  }
  FTZ_END
}
"""
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp-simd", "-fPIC", "-shared"]
_F, _I = ctypes.c_void_p, ctypes.c_int


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    path = Path(root) / "forecast"
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError:
        return Path(tempfile.gettempdir())


@lru_cache(maxsize=1)
def _library():
    """Compile (once per source and flags) and load the kernel; None when no compiler works."""
    key = hashlib.sha256((SOURCE + " ".join(FLAGS)).encode()).hexdigest()[:16]
    lib = _cache_dir() / f"selective_scan_{key}.so"
    if not lib.exists():
        src = lib.with_suffix(".c")
        src.write_text(SOURCE)
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        cc = os.environ.get("CC", "cc")
        try:
            subprocess.run([cc, *FLAGS, str(src), "-o", str(tmp), "-lm"], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError):
            return None
        tmp.replace(lib)  # atomic: concurrent builders never load a half-written file
    dll = ctypes.CDLL(str(lib))
    dll.scan_fwd.argtypes = [_F] * 8 + [_I] * 7
    dll.scan_bwd.argtypes = [_F] * 12 + [_I] * 7
    return dll


def available() -> bool:
    return _library() is not None


def _channel_ranges(E: int) -> list[tuple[int, int]]:
    n = max(1, min(torch.get_num_threads(), E))
    return [(E * i // n, E * (i + 1) // n) for i in range(n)]


def _run(fn, ranges):
    """fn(worker, d0, d1) per channel range, on threads: ctypes releases the GIL."""
    if len(ranges) == 1:
        return fn(0, *ranges[0])
    with ThreadPoolExecutor(len(ranges)) as pool:
        list(pool.map(lambda w: fn(w, *ranges[w]), range(len(ranges))))


def _p(t: torch.Tensor):
    return ctypes.c_void_p(t.data_ptr())


class FusedScan(torch.autograd.Function):
    """Same contract as scan.ChunkedScan: (u, delta, A, B, C, chunk) -> (y, last state), fp32 CPU."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, chunk):
        (Bsz, E, L), N = u.shape, A.shape[1]
        Bt, Ct = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()  # (B, L, N)
        y = torch.empty_like(u)  # (B, E, L)
        starts = u.new_empty(Bsz, E, -(-L // chunk), N)  # state entering each chunk
        last = u.new_empty(Bsz, E, N)
        lib, A = _library(), A.contiguous()
        _run(lambda w, d0, d1: lib.scan_fwd(_p(u), _p(delta), _p(A), _p(Bt), _p(Ct), _p(y), _p(starts),
                                            _p(last), Bsz, E, L, N, chunk, d0, d1), _channel_ranges(E))
        ctx.save_for_backward(u, delta, A, Bt, Ct, starts)
        ctx.chunk = chunk
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    def backward(ctx, dy, _dlast):
        u, delta, A, Bt, Ct, starts = ctx.saved_tensors
        (Bsz, E, L), N = u.shape, A.shape[1]
        dy = dy.contiguous()
        du, ddelta, dA = torch.empty_like(u), torch.empty_like(delta), torch.empty_like(A)
        ranges = _channel_ranges(E)
        dB = u.new_zeros(len(ranges), Bsz, L, N)  # per-worker partial sums over channels
        dC = u.new_zeros(len(ranges), Bsz, L, N)
        lib = _library()
        _run(lambda w, d0, d1: lib.scan_bwd(_p(u), _p(delta), _p(A), _p(Bt), _p(Ct), _p(starts), _p(dy),
                                            _p(du), _p(ddelta), _p(dA), _p(dB[w]), _p(dC[w]),
                                            Bsz, E, L, N, ctx.chunk, d0, d1), ranges)
        return du, ddelta, dA, dB.sum(0).transpose(1, 2), dC.sum(0).transpose(1, 2), None
