"""Mamba-1 selective scan: a sequential reference, chunked PyTorch, a C kernel, the CUDA kernel.

All share mamba_ssm's signature (`selective_scan_fn`):
    u, delta: (B, D, L)   A: (D, N)   B, C: (B, N, L)   D: (D,)   z: (B, D, L)
    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,   y_t = C_t h_t + D u_t,   y *= silu(z)
`selective_scan` dispatches on impl: "auto" | "torch" | "cpu" | "cuda".
"""
import torch
import torch.nn.functional as F


def _prepare_delta(delta, delta_bias, delta_softplus):
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]  # (B, D, L)
    return F.softplus(delta) if delta_softplus else delta


def _finish(y, u, D, z):
    if D is not None:
        y = y + u * D[:, None]  # (B, D, L)
    return y * F.silu(z) if z is not None else y


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, return_last_state=False):
    """Sequential scan, one Python step per position: the test oracle, never the fast path."""
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    dA = torch.exp(delta[..., None] * A[:, None])  # (B, D, L, N)
    dBu = (delta * u)[..., None] * B.transpose(1, 2)[:, None]  # (B, D, L, N)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # (B, D, N)
    ys = []
    for t in range(u.shape[2]):
        h = dA[:, :, t] * h + dBu[:, :, t]  # (B, D, N)
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))  # (B, D)
    y = _finish(torch.stack(ys, dim=2), u, D, z)  # (B, D, L)
    return (y, h) if return_last_state else y


# --- chunked CPU path -------------------------------------------------------------
# Time is cut into chunks of `chunk` positions. Within a chunk the recurrence is solved by a
# log-depth doubling scan over (B, D, T, N) tensors small enough to stay in cache; the state is
# carried from chunk to chunk. Backward recomputes each chunk's states from the saved chunk
# starts, so memory is O(B D L) plus one chunk, never O(B D L N).


def _scan_(a, x):
    """In place along dim 2: x_t <- a_t x_{t-1} + x_t (a is clobbered)."""
    k, T = 1, x.shape[2]
    while k < T:
        x[:, :, k:] += a[:, :, k:] * x[:, :, :-k]  # (B, D, T-k, N)
        if 2 * k < T:
            a[:, :, k:] = a[:, :, k:] * a[:, :, :-k]
        k *= 2
    return x


def _rscan_(a, x):
    """In place along dim 2, right to left: x_t <- a_t x_{t+1} + x_t (a is clobbered)."""
    k, T = 1, x.shape[2]
    while k < T:
        x[:, :, :-k] += a[:, :, :-k] * x[:, :, k:]  # (B, D, T-k, N)
        if 2 * k < T:
            a[:, :, :-k] = a[:, :, :-k] * a[:, :, k:]
        k *= 2
    return x


def _chunk_states(u, delta, A, B, h0):
    """States h_t (B, D, T, N) of one chunk from its start state h0 (B, D, N); also exp(delta A)."""
    dA = torch.exp(delta[..., None] * A[:, None])  # (B, D, T, N)
    h = (delta * u)[..., None] * B.transpose(1, 2)[:, None]  # (B, D, T, N)
    h[:, :, 0] += dA[:, :, 0] * h0
    return _scan_(dA.clone(), h), dA


class ChunkedScan(torch.autograd.Function):
    """y_t = C_t h_t with h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t; returns (y, last state)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, chunk):
        Bsz, Dm, L = u.shape
        h = u.new_zeros(Bsz, Dm, A.shape[1])  # (B, D, N)
        y, starts = torch.empty_like(u), []
        for t0 in range(0, L, chunk):
            s = slice(t0, t0 + chunk)
            starts.append(h)
            hs, _ = _chunk_states(u[..., s], delta[..., s], A, B[..., s], h)  # (B, D, T, N)
            y[..., s] = torch.einsum("bdtn,bnt->bdt", hs, C[..., s])
            h = hs[:, :, -1].clone()
        ctx.save_for_backward(u, delta, A, B, C, torch.stack(starts))
        ctx.chunk = chunk
        ctx.mark_non_differentiable(h)
        return y, h

    @staticmethod
    def backward(ctx, dy, _dlast):
        u, delta, A, B, C, starts = ctx.saved_tensors
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dB, dC, dA_total = torch.empty_like(B), torch.empty_like(C), torch.zeros_like(A)
        carry = torch.zeros_like(starts[0])  # dL/dh flowing into the previous chunk, (B, D, N)
        L = u.shape[2]
        for i, t0 in reversed(list(enumerate(range(0, L, ctx.chunk)))):
            s = slice(t0, t0 + ctx.chunk)
            grads, carry = _chunk_backward(u[..., s], delta[..., s], A, B[..., s], C[..., s],
                                           dy[..., s], starts[i], carry)
            du[..., s], ddelta[..., s], dB[..., s], dC[..., s], dA_chunk = grads
            dA_total += dA_chunk
        return du, ddelta, dA_total, dB, dC, None


def _chunk_backward(u, delta, A, B, C, dy, h0, carry):
    """Gradients of one chunk given dL/dy and the gradient arriving from the next chunk."""
    hs, dA = _chunk_states(u, delta, A, B, h0)  # (B, D, T, N)
    h_prev = torch.cat([h0[:, :, None], hs[:, :, :-1]], dim=2)  # h_{t-1}, (B, D, T, N)
    Bt, Ct = B.transpose(1, 2)[:, None], C.transpose(1, 2)[:, None]  # (B, 1, T, N)
    g = dy[..., None] * Ct  # dL/dh_t from y_t, (B, D, T, N)
    g[:, :, -1] += carry
    a_next = torch.zeros_like(dA)
    a_next[:, :, :-1] = dA[:, :, 1:]  # g_t += exp(delta_{t+1} A) g_{t+1}
    g = _rscan_(a_next, g)  # (B, D, T, N)
    gBt = torch.einsum("bdtn,btn->bdt", g, Bt[:, 0])  # (B, D, T)
    decay_grad = g * h_prev * dA  # dL/d(delta_t A), (B, D, T, N)
    ddelta = torch.einsum("bdtn,dn->bdt", decay_grad, A) + gBt * u  # (B, D, T)
    dA_param = torch.einsum("bdtn,bdt->dn", decay_grad, delta)  # (D, N)
    dB = torch.einsum("bdtn,bdt->bnt", g, delta * u)  # (B, N, T)
    dC = torch.einsum("bdtn,bdt->bnt", hs, dy)  # (B, N, T)
    return (gBt * delta, ddelta, dB, dC, dA_param), dA[:, :, 0] * g[:, :, 0]


def _with_core(core, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk):
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    y, last = core.apply(u.contiguous(), delta.contiguous(), A, B.contiguous(), C.contiguous(), chunk)
    y = _finish(y, u, D, z)  # (B, D, L)
    return (y, last) if return_last_state else y


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                           delta_softplus=False, return_last_state=False, chunk=64):
    """Chunked parallel scan in PyTorch, any device; same result as `selective_scan_ref`."""
    return _with_core(ChunkedScan, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk)


def selective_scan_fused(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                         delta_softplus=False, return_last_state=False, chunk=64):
    """The compiled CPU kernel (float32, CPU tensors); same result as `selective_scan_ref`.

    It works channels-last: when u, delta, z (B, D, L) and B, C (B, N, L) are transposed views of
    (B, L, .) tensors, as in the Mamba block, no copy is made.
    """
    from forecast.model.backbones.cpu_kernels import FusedScan

    def last(t):
        return None if t is None else t.transpose(1, 2).contiguous()  # (B, L, .)

    y, h = FusedScan.apply(last(u), last(delta), A.contiguous(), last(B), last(C), D, last(z),
                           delta_bias, delta_softplus, chunk)
    y = y.transpose(1, 2)  # (B, D, L) view
    return (y, h) if return_last_state else y


# --- dispatch ----------------------------------------------------------------------
IMPLS = ("auto", "torch", "cpu", "cuda")


def cuda_kernels():
    """mamba_ssm's (selective_scan_fn, selective_state_update), or raise a one-line error."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
    except Exception as err:  # noqa: BLE001 - ImportError, or a missing compiled extension (any error)
        raise RuntimeError(f"impl=cuda needs mamba-ssm with its CUDA kernels "
                           f"(pip install -e '.[cuda]' on a GPU machine): {err}") from None
    return selective_scan_fn, selective_state_update


def resolve_impl(impl: str, x: torch.Tensor) -> str:
    """'cuda' (mamba-ssm kernels), 'cpu' (compiled C kernels) or 'torch' (chunked PyTorch).

    auto: the CUDA kernels for GPU tensors when installed; the C kernel for float32 CPU tensors
    when a C compiler is found; else PyTorch. Forcing an unavailable impl raises.
    """
    from forecast.model.backbones import cpu_kernels

    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "cuda":
        cuda_kernels()
    if impl == "cpu" and not cpu_kernels.available():
        raise RuntimeError("impl=cpu needs a C compiler (cc, or $CC) to build the CPU scan kernel")
    if impl != "auto":
        return impl
    if torch.compiler.is_exporting():  # an exported graph (ONNX) holds no compiled kernel: the tested torch path
        return "torch"
    if x.is_cuda:
        try:
            cuda_kernels()
            return "cuda"
        except RuntimeError:
            return "torch"
    return "cpu" if x.dtype == torch.float32 and not x.is_cuda and cpu_kernels.available() else "torch"


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   impl="auto", chunk=64):
    """Dispatch the selective scan to the CUDA kernel, the C kernel or the chunked PyTorch path."""
    impl = resolve_impl(impl, u)
    if impl == "cuda":
        return cuda_kernels()[0](u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    fn = selective_scan_fused if impl == "cpu" else selective_scan_chunked
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk=chunk)
