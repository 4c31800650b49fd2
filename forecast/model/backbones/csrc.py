"""C source of the fused CPU kernels (compiled and loaded by cpu_kernels.py).

The scan's forward is channels-last, (B, L, E), so a thread owning channels [d0, d1) reads
contiguous memory at every step; its backward walks one channel at a time, channel-first (B, E, L),
keeping that channel's state and gradients in registers. B and C are (B, L, N) throughout.
"""

SOURCE = r"""
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE__
#include <xmmintrin.h>  /* flush denormals to zero while a kernel runs: they are ~100x slower */
#define FTZ_BEGIN unsigned int csr_ = _mm_getcsr(); _mm_setcsr(csr_ | 0x8040);
#define FTZ_END _mm_setcsr(csr_);
#else
#define FTZ_BEGIN
#define FTZ_END
#endif

#define R restrict
static inline float softplus_(float x) { return x > 20.f ? x : logf(1.f + expf(x)); }
static inline float sigmoid_(float x) { return 1.f / (1.f + expf(-x)); }

/* dt = softplus(delta + bias) (or without softplus) for channels [d0, d0+n) of row r: vectorised */
static void dt_row(const float* R delta, const float* R bias, int sp, long r, int d0, int n, float* R dt) {
  #pragma omp simd
  for (int j = 0; j < n; j++) {
    float raw = delta[r + d0 + j] + (bias ? bias[d0 + j] : 0.f);
    dt[j] = sp ? softplus_(raw) : raw;
  }
}

/* y = (C.h + D u) * silu(z). starts: (B, nC, E, N), last: (B, E, N). */
void scan_fwd(const float* R u, const float* R delta, const float* R z, const float* R A,
              const float* R Bm, const float* R Cm, const float* R D, const float* R bias, float* R y,
              float* R starts, float* R last, int B, int L, int E, int N, int chunk, int sp, int d0, int d1) {
  FTZ_BEGIN
  int nC = (L + chunk - 1) / chunk, nd = d1 - d0;
  float* R h = malloc(sizeof(float) * nd * (N + 2));
  float* R dt = h + (long)nd * N;
  float* R acc = dt + nd;
  for (int b = 0; b < B; b++) {
    memset(h, 0, sizeof(float) * nd * N);
    for (int t = 0; t < L; t++) {
      long r = ((long)b * L + t) * E;
      if (t % chunk == 0)
        memcpy(starts + (((long)b * nC + t / chunk) * E + d0) * N, h, sizeof(float) * nd * N);
      const float* Bp = Bm + ((long)b * L + t) * N;
      const float* Cp = Cm + ((long)b * L + t) * N;
      dt_row(delta, bias, sp, r, d0, nd, dt);
      for (int j = 0; j < nd; j++) {
        float dx = dt[j] * u[r + d0 + j], a = 0.f;
        float* hd = h + (long)j * N;
        const float* Ad = A + (long)(d0 + j) * N;
        #pragma omp simd reduction(+:a)
        for (int n = 0; n < N; n++) { hd[n] = expf(dt[j] * Ad[n]) * hd[n] + dx * Bp[n]; a += hd[n] * Cp[n]; }
        acc[j] = a;
      }
      #pragma omp simd
      for (int j = 0; j < nd; j++) {
        int d = d0 + j;
        float out = acc[j] + (D ? D[d] * u[r + d] : 0.f);
        y[r + d] = z ? out * z[r + d] * sigmoid_(z[r + d]) : out;
      }
    }
    memcpy(last + ((long)b * E + d0) * N, h, sizeof(float) * nd * N);
  }
  free(h);
  FTZ_END
}

/* Backward for channels [d0, d1), one channel at a time so its state and gradients stay in
   registers. Channel-first here: u, delta, z, dy, du, ddelta, dz are (B, E, L). dA, dD, dbias
   are written for these channels; dB, dC (B, L, N) are this worker's partial sums (zeroed). */
void scan_bwd(const float* R u, const float* R delta, const float* R z, const float* R A,
              const float* R Bm, const float* R Cm, const float* R D, const float* R bias,
              const float* R starts, const float* R dy, float* R du, float* R ddelta, float* R dz,
              float* R dA, float* R dB, float* R dC, float* R dD, float* R dbias,
              int B, int L, int E, int N, int chunk, int sp, int d0, int d1) {
  FTZ_BEGIN
  int nC = (L + chunk - 1) / chunk;
  float* R hs = malloc(sizeof(float) * chunk * (2 * N + 5));  /* one chunk: states, decays, */
  float* R as = hs + (long)chunk * N;
  float* R dt = as + (long)chunk * N;                            /* dt, dL/d(out), C.h, g.B, */
  float* R dout = dt + chunk, * R acc = dout + chunk, * R gb = acc + chunk, * R gdec = gb + chunk;
  float g[N], dAd[N];                                            /* dL/d(dt A) */
  for (int d = d0; d < d1; d++) {
    const float* Ad = A + (long)d * N;
    float Dd = D ? D[d] : 0.f, bd = bias ? bias[d] : 0.f, dDd = 0.f, dbd = 0.f;
    memset(dAd, 0, sizeof(dAd));
    for (int b = 0; b < B; b++) {
      long row = ((long)b * E + d) * L;
      memset(g, 0, sizeof(g));
      for (int c = nC - 1; c >= 0; c--) {
        int t0 = c * chunk, T = (L - t0 < chunk) ? L - t0 : chunk;
        const float* h0 = starts + (((long)b * nC + c) * E + d) * N;
        const float *uc = u + row + t0, *dyc = dy + row + t0, *zc = z ? z + row + t0 : 0;
        #pragma omp simd
        for (int i = 0; i < T; i++) {
          float raw = delta[row + t0 + i] + bd;
          dt[i] = sp ? softplus_(raw) : raw;
          dout[i] = zc ? dyc[i] * zc[i] * sigmoid_(zc[i]) : dyc[i];
        }
        for (int i = 0; i < T; i++) {          /* recompute this chunk's states */
          const float* Bp = Bm + ((long)b * L + t0 + i) * N;
          const float* hp = i ? hs + (long)(i - 1) * N : h0;
          float* hc = hs + (long)i * N, * ac = as + (long)i * N, dti = dt[i], dx = dti * uc[i];
          #pragma omp simd
          for (int n = 0; n < N; n++) { ac[n] = expf(dti * Ad[n]); hc[n] = ac[n] * hp[n] + dx * Bp[n]; }
        }
        for (int i = T - 1; i >= 0; i--) {      /* and walk back through it */
          long rn = ((long)b * L + t0 + i) * N;
          const float* hp = i ? hs + (long)(i - 1) * N : h0;
          const float* hc = hs + (long)i * N;
          const float* ac = as + (long)i * N;
          float a_ = 0.f, gb_ = 0.f, gd_ = 0.f, o = dout[i], dti = dt[i], dxi = dti * uc[i];
          #pragma omp simd reduction(+:a_, gb_, gd_)
          for (int n = 0; n < N; n++) {
            a_ += hc[n] * Cm[rn + n];
            g[n] += o * Cm[rn + n];                     /* dL/dh_t */
            dC[rn + n] += o * hc[n];
            float gd = g[n] * hp[n] * ac[n];
            gd_ += gd * Ad[n]; dAd[n] += gd * dti;
            gb_ += g[n] * Bm[rn + n]; dB[rn + n] += g[n] * dxi;
            g[n] *= ac[n];                              /* flows on to h_{t-1} */
          }
          acc[i] = a_; gb[i] = gb_; gdec[i] = gd_;
        }
        #pragma omp simd reduction(+:dDd, dbd)
        for (int i = 0; i < T; i++) {
          long t = row + t0 + i; float x = uc[i];
          if (zc) { float zs = sigmoid_(zc[i]); dz[t] = dyc[i] * (acc[i] + Dd * x) * zs * (1.f + zc[i] * (1.f - zs)); }
          dDd += dout[i] * x;
          du[t] = gb[i] * dt[i] + dout[i] * Dd;
          float ddt = gdec[i] + gb[i] * x;
          float draw = sp ? ddt * (1.f - expf(-dt[i])) : ddt;  /* softplus' = sigmoid = 1 - exp(-dt) */
          ddelta[t] = draw; dbd += draw;
        }
      }
    }
    memcpy(dA + (long)d * N, dAd, sizeof(dAd));
    if (D) dD[d] = dDd;
    if (bias) dbias[d] = dbd;
  }
  free(hs);
  FTZ_END
}

/* Depthwise causal conv, channels-last: y[b,t,c] = act(bias[c] + sum_k w[k,c] x[b, t-K+1+k, c]). */
void conv_fwd(const float* R x, const float* R w, const float* R bias, float* R y,
              int B, int L, int C, int K, int silu, int c0, int c1) {
  for (int b = 0; b < B; b++) for (int t = 0; t < L; t++) {
    float* yr = y + ((long)b * L + t) * C;
    for (int c = c0; c < c1; c++) yr[c] = bias[c];
    for (int k = 0; k < K; k++) {
      int s = t - K + 1 + k;
      if (s < 0) continue;
      const float* xr = x + ((long)b * L + s) * C;
      #pragma omp simd
      for (int c = c0; c < c1; c++) yr[c] += w[(long)k * C + c] * xr[c];
    }
    if (silu) {
      #pragma omp simd
      for (int c = c0; c < c1; c++) yr[c] = yr[c] / (1.f + expf(-yr[c]));
    }
  }
}

/* Its backward for channels [c0, c1); dx, dw, dbias zeroed by the caller. */
void conv_bwd(const float* R x, const float* R w, const float* R bias, const float* R dy, float* R dx,
              float* R dw, float* R dbias, int B, int L, int C, int K, int silu, int c0, int c1) {
  int nc = c1 - c0;
  float* g = malloc(sizeof(float) * nc);  /* dL/d(pre-activation) at one step */
  for (int b = 0; b < B; b++) for (int t = 0; t < L; t++) {
    long r = ((long)b * L + t) * C;
    for (int c = c0; c < c1; c++) g[c - c0] = dy[r + c];
    if (silu) {
      for (int c = c0; c < c1; c++) {
        float pre = bias[c];
        for (int k = 0; k < K; k++) {
          int s = t - K + 1 + k;
          if (s >= 0) pre += w[(long)k * C + c] * x[((long)b * L + s) * C + c];
        }
        float sg = 1.f / (1.f + expf(-pre));
        g[c - c0] *= sg * (1.f + pre * (1.f - sg));
      }
    }
    for (int c = c0; c < c1; c++) dbias[c] += g[c - c0];
    for (int k = 0; k < K; k++) {
      int s = t - K + 1 + k;
      if (s < 0) continue;
      long rs = ((long)b * L + s) * C;
      #pragma omp simd
      for (int c = c0; c < c1; c++) {
        dx[rs + c] += w[(long)k * C + c] * g[c - c0];
        dw[(long)k * C + c] += g[c - c0] * x[rs + c];
      }
    }
  }
  free(g);
}
"""
