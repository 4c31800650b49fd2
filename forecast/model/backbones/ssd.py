"""Linear recurrences with one scalar decay per head, in chunked matmul form (SSD).

    S_t = exp(log_a_t) S_{t-1} + k_t^T v_t        S: (K, V) per head
    y_t = q_t S_t
Mamba-2 is this with q=C, k=B, v=dt*x, log_a=dt*A; linear attention with a decay or gate is
this with log_a from the config (0 = no decay). Shapes: q, k (B, H, L, K); v (B, H, L, V);
log_a (B, H, L), all log_a <= 0. In the chunked form q and k may have H=1 (shared by all heads,
as Mamba-2's B and C are): q k^T is then computed once, not once per head.
"""
import torch
import torch.nn.functional as F


def decay_attention_ref(q, k, v, log_a, state=None):
    """Sequential recurrence, one Python step per position: the test oracle. Returns (y, state)."""
    Bsz, H, L, K = q.shape
    S = q.new_zeros(Bsz, H, K, v.shape[-1]) if state is None else state  # (B, H, K, V)
    ys = []
    for t in range(L):
        S = torch.exp(log_a[:, :, t, None, None]) * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        ys.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], S))  # (B, H, V)
    return torch.stack(ys, dim=2), S


def decay_attention_step(q_t, k_t, v_t, log_a_t, state=None):
    """One position: q_t, k_t (B, H, K); v_t (B, H, V); log_a_t (B, H). Returns (y_t, state)."""
    S = k_t[..., None] * v_t[..., None, :]  # (B, H, K, V)
    if state is not None:
        S = S + torch.exp(log_a_t)[..., None, None] * state
    return torch.einsum("bhk,bhkv->bhv", q_t, S), S


def _decay(log_a):
    """exp(log_a), with factors below exp(-60) set to exactly 0: denormal floats are ~100x
    slower on CPU, and strong decays over a chunk produce them."""
    return log_a.masked_fill(log_a < -60, float("-inf")).exp()


def _pad(x, T):
    """Zero-pad dim 2 (time) of x up to a multiple of T."""
    extra = -x.shape[2] % T
    return F.pad(x, (0, 0) * (x.dim() - 3) + (0, extra)) if extra else x


def decay_attention_chunked(q, k, v, log_a, chunk: int = 64):
    """Same result as `decay_attention_ref`: quadratic inside chunks, recurrent across them."""
    L = v.shape[2]
    T = min(chunk, L)
    q, k, v, log_a = (_pad(t, T) for t in (q, k, v, log_a))  # padded steps come last: no effect
    n = v.shape[2] // T
    q, k, v = (t.reshape(*t.shape[:2], n, T, -1) for t in (q, k, v))  # (B, H or 1, n, T, .)
    cs = log_a.reshape(*log_a.shape[:2], n, T).cumsum(-1)  # (B, H, n, T), decreasing
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    seg = (cs[..., :, None] - cs[..., None, :]).masked_fill(~causal, float("-inf"))  # (B, H, n, T, T)
    y = ((q @ k.transpose(-1, -2)) * _decay(seg)) @ v  # within chunks, (B, H, n, T, V)
    k_end = k * _decay(cs[..., -1:] - cs)[..., None]  # decayed to the chunk's end, (B, H, n, T, K)
    chunk_states = k_end.transpose(-1, -2) @ v  # (B, H, n, K, V)
    chunk_decay = _decay(cs[..., -1])[..., None, None]  # (B, H, n, 1, 1)
    S = torch.zeros_like(chunk_states[:, :, 0])  # (B, H, K, V)
    starts = []
    # A loop over chunks, not time steps; unbind (not indexing) keeps its backward linear in n.
    for decay, state in zip(chunk_decay.unbind(2), chunk_states.unbind(2)):
        starts.append(S)
        S = decay * S + state
    starts = torch.stack(starts, dim=2)  # state entering each chunk, (B, H, n, K, V)
    y = y + (q * _decay(cs)[..., None]) @ starts  # (B, H, n, T, V)
    return y.flatten(2, 3)[:, :, :L]
