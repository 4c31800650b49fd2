"""The CUDA kernels (mamba-ssm) match the PyTorch paths. Skipped without a GPU and mamba-ssm."""
import pytest
import torch

from forecast.model.backbones.scan import selective_scan_chunked, selective_scan_ref

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
try:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update  # noqa: F401
except Exception as err:  # noqa: BLE001 - not installed, or its compiled extension is missing
    pytest.skip(f"mamba-ssm kernels unavailable: {err}", allow_module_level=True)


def _inputs(b=2, d=16, n=8, L=100):
    g = torch.Generator(device="cuda").manual_seed(0)
    def r(*s):
        return torch.randn(*s, device="cuda", generator=g)
    A = -torch.rand(d, n, device="cuda", generator=g) * 3
    return [r(b, d, L), r(b, d, L), A, r(b, n, L), r(b, n, L), r(d), r(b, d, L), r(d)]


@pytest.mark.parametrize("fn", [selective_scan_ref, selective_scan_chunked])
def test_selective_scan_kernel_matches_torch(fn):
    inputs = [t.requires_grad_() for t in _inputs()]
    u, delta, A, B, C, D, z, bias = inputs
    y_k = selective_scan_fn(u, delta, A, B, C, D, z, bias, True)
    y_t = fn(u, delta, A, B, C, D, z, delta_bias=bias, delta_softplus=True)
    torch.testing.assert_close(y_k, y_t, rtol=1e-3, atol=1e-3)
    w = torch.randn_like(y_k)
    for a, b in zip(torch.autograd.grad((y_k * w).sum(), inputs), torch.autograd.grad((y_t * w).sum(), inputs)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-2)


def test_mamba_backbone_cuda_equals_torch_forward_and_step():
    from forecast.model.backbones.mamba import Mamba

    torch.manual_seed(0)
    cuda, cpu_path = Mamba(32, 2, impl="cuda").cuda(), Mamba(32, 2, impl="torch").cuda()
    cpu_path.load_state_dict(cuda.state_dict())  # same parameter names on both paths
    x = torch.randn(2, 50, 32, device="cuda")
    torch.testing.assert_close(cuda(x), cpu_path(x), rtol=1e-3, atol=1e-3)
    s1 = s2 = None
    for t in range(5):
        y1, s1 = cuda.step(x[:, t], s1)
        y2, s2 = cpu_path.step(x[:, t], s2)
        torch.testing.assert_close(y1, y2, rtol=1e-3, atol=1e-3)
