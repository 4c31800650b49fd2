"""Fast scans equal their sequential references, on outputs and gradients, at fp32 tolerances."""
import pytest
import torch

from forecast.model.backbones import cpu_kernels
from forecast.model.backbones.scan import (
    selective_scan,
    selective_scan_chunked,
    selective_scan_fused,
    selective_scan_ref,
)

FAST = [selective_scan_chunked]
if cpu_kernels.available():  # needs a C compiler; without one, auto falls back to the chunked path
    FAST.append(selective_scan_fused)

SHAPES = [  # (batch, channels, state, length, chunk): L=1, L < chunk, L not a multiple of chunk
    (1, 3, 2, 1, 4), (2, 8, 4, 3, 8), (2, 8, 4, 13, 4), (1, 6, 16, 64, 16), (3, 5, 4, 37, 8),
]


def _inputs(b, d, n, L, seed):
    g = torch.Generator().manual_seed(seed)
    def r(*s):
        return torch.randn(*s, generator=g)
    A = -torch.rand(d, n, generator=g) * 3  # (D, N), negative
    return [r(b, d, L), r(b, d, L), A, r(b, n, L), r(b, n, L), r(d), r(b, d, L), r(d)]


def _value_and_grads(fn, inputs, **kw):
    inputs = [t.clone().requires_grad_() for t in inputs]
    u, delta, A, B, C, D, z, bias = inputs
    y, last = fn(u, delta, A, B, C, D, z, delta_bias=bias, delta_softplus=True, return_last_state=True, **kw)
    weight = torch.linspace(-1, 1, y.numel()).view_as(y)
    grads = torch.autograd.grad((y * weight).sum(), inputs)
    return y, last, grads


@pytest.mark.parametrize("fast", FAST, ids=lambda f: f.__name__)
@pytest.mark.parametrize("shape", SHAPES)
def test_fast_scan_matches_reference(shape, fast):
    *dims, chunk = shape
    inputs = _inputs(*dims, seed=sum(shape))
    y_ref, last_ref, g_ref = _value_and_grads(selective_scan_ref, inputs)
    y, last, g = _value_and_grads(fast, inputs, chunk=chunk)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(last, last_ref, rtol=1e-4, atol=1e-5)
    for name, a, b in zip("u delta A B C D z bias".split(), g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize("fast", FAST, ids=lambda f: f.__name__)
def test_strong_decay_is_stable(fast):
    """Large delta*|A| (states forgotten within a step) must not overflow or produce NaN."""
    u, delta, A, B, C, *_ = _inputs(2, 4, 4, 40, seed=1)
    delta = delta.abs() * 50
    y_ref = selective_scan_ref(u, delta, A * 10, B, C)
    y = fast(u, delta, A * 10, B, C, chunk=16)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)


def test_cuda_impl_without_kernels_raises_clearly():
    try:
        import mamba_ssm  # noqa: F401
        pytest.skip("mamba-ssm is installed")
    except Exception:  # noqa: BLE001 - not installed, or unimportable without CUDA: what this test needs
        pass
    u, delta, A, B, C, *_ = _inputs(1, 2, 2, 3, seed=0)
    with pytest.raises(RuntimeError, match="impl=cuda needs mamba-ssm"):
        selective_scan(u, delta, A, B, C, impl="cuda")
    with pytest.raises(ValueError, match="impl must be one of"):
        selective_scan(u, delta, A, B, C, impl="gpu")


@pytest.mark.parametrize("L,chunk", [(1, 4), (3, 8), (13, 4), (32, 8)])
def test_chunked_decay_attention_matches_reference(L, chunk):
    from forecast.model.backbones.ssd import decay_attention_chunked, decay_attention_ref

    g = torch.Generator().manual_seed(L)
    shapes = [(2, 3, L, 4), (2, 3, L, 4), (2, 3, L, 5)]
    q, k, v = (torch.randn(*s, generator=g).requires_grad_() for s in shapes)
    log_a = (-torch.rand(2, 3, L, generator=g) * 2).requires_grad_()  # includes strong decays
    y_ref, _ = decay_attention_ref(q, k, v, log_a)
    y = decay_attention_chunked(q, k, v, log_a, chunk)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    w = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad((y * w).sum(), (q, k, v, log_a)),
                    torch.autograd.grad((y_ref * w).sum(), (q, k, v, log_a))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_chunked_decay_attention_with_shared_qk():
    """Mamba-2's single group: q and k with one head broadcast over the heads of v."""
    from forecast.model.backbones.ssd import decay_attention_chunked, decay_attention_ref

    g = torch.Generator().manual_seed(7)
    q, k = torch.randn(2, 1, 11, 4, generator=g), torch.randn(2, 1, 11, 4, generator=g)
    v, log_a = torch.randn(2, 3, 11, 5, generator=g), -torch.rand(2, 3, 11, generator=g)
    y_ref, _ = decay_attention_ref(q.expand(2, 3, 11, 4), k.expand(2, 3, 11, 4), v, log_a)
    torch.testing.assert_close(decay_attention_chunked(q, k, v, log_a, 4), y_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler for the CPU kernels")
@pytest.mark.parametrize("L", [1, 2, 9])
def test_compiled_causal_conv_matches_torch_conv1d(L):
    from forecast.model.backbones.block import causal_conv

    torch.manual_seed(L)
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3)
    x = torch.randn(2, L, 6, requires_grad=True)
    ref = torch.nn.functional.silu(conv(x.transpose(1, 2))[..., :L].transpose(1, 2))  # (B, L, C)
    for fused in (False, True):
        y = causal_conv(x, conv, fused=fused)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
        w = torch.randn_like(y)
        grads = torch.autograd.grad((y * w).sum(), (x, conv.weight, conv.bias))
        ref_grads = torch.autograd.grad((ref * w).sum(), (x, conv.weight, conv.bias), retain_graph=True)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_auto_falls_back_to_pytorch_without_a_compiler(monkeypatch):
    from forecast.model.backbones.scan import resolve_impl

    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    x = torch.zeros(1, 2, 3)
    assert resolve_impl("auto", x) == "torch"
    with pytest.raises(RuntimeError, match="impl=cpu needs a C compiler"):
        resolve_impl("cpu", x)


def test_cpu_kernels_leave_the_process_float_state_alone():
    """Loading or running the compiled kernels must not turn on flush-to-zero for the whole process."""
    import numpy as np

    from forecast.model.backbones import cpu_kernels
    from forecast.model.backbones.mamba import Mamba

    if not cpu_kernels.available():
        pytest.skip("no C compiler")
    m = Mamba(16, impl="cpu")
    m(torch.randn(2, 8, 16)).sum().backward()
    assert np.nextafter(np.float64(0), 1) > 0 and np.float32(1e-40) != 0
