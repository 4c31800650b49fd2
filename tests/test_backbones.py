"""Every backbone: shape, causality (no look-ahead), and step-by-step == full forward."""
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

D_MODEL = 16
# Small shapes; chunk=4 so that sequences span several chunks and end mid-chunk.
SMALL = {
    "mamba": {"chunk": 4},
    "mamba2": {"chunk": 4, "headdim": 8, "d_state": 8},
    "linear_attention": {"chunk": 4},
    "linear_attention_fixed": {"chunk": 4, "decay": "fixed"},
    "linear_attention_none": {"chunk": 4, "decay": "none"},
    "transformer": {},
    "lstm": {},
}
NAMES = list(SMALL)


def build(name: str, **overrides) -> torch.nn.Module:
    cfg = OmegaConf.load(f"conf/model/backbone/{name.split('_fixed')[0].split('_none')[0]}.yaml")
    overrides = {**SMALL[name], **overrides}
    cfg = OmegaConf.merge({"model": {"d_model": D_MODEL}}, {"backbone": cfg}, {"backbone": overrides})
    torch.manual_seed(0)
    return instantiate(cfg.backbone).eval()


@pytest.mark.parametrize("name", NAMES)
def test_shape_and_causality(name):
    model = build(name)
    x = torch.randn(2, 11, D_MODEL)
    y = model(x)
    assert y.shape == x.shape
    t = 6
    x2 = x.clone()
    x2[:, t + 1:] = torch.randn(2, 11 - t - 1, D_MODEL) * 10  # change only the future
    y2 = model(x2)
    torch.testing.assert_close(y2[:, : t + 1], y[:, : t + 1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(y2[:, t + 1:], y[:, t + 1:])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("L", [1, 10])
def test_step_equals_forward(name, L):
    model = build(name)
    x = torch.randn(3, L, D_MODEL)
    with torch.no_grad():
        full = model(x)  # (B, L, D)
        state, steps = None, []
        for t in range(L):
            y_t, state = model.step(x[:, t], state)
            steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, dim=1), full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_trains(name):
    """Gradients reach every parameter."""
    model = build(name).train()
    model(torch.randn(2, 7, D_MODEL)).pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


def test_mamba_keeps_mamba_ssm_parameter_names():
    names = {n.split(".")[-1] if "proj" not in n and "conv" not in n else n.split(".")[-2]
             for n in build("mamba").state_dict()}
    assert {"in_proj", "conv1d", "x_proj", "dt_proj", "A_log", "D", "out_proj"} <= names


def test_torch_and_compiled_paths_agree_and_share_weights():
    """The chunked PyTorch path and the C kernel give one model: same weights, same outputs."""
    from forecast.model.backbones import cpu_kernels

    if not cpu_kernels.available():
        pytest.skip("no C compiler for the CPU kernels")
    for name in ("mamba", "mamba2"):
        torch_path, kernel = build(name, impl="torch"), build(name, impl="cpu")
        kernel.load_state_dict(torch_path.state_dict())
        x = torch.randn(2, 13, D_MODEL, requires_grad=True)
        y_t, y_k = torch_path(x), kernel(x)
        torch.testing.assert_close(y_k, y_t, rtol=1e-4, atol=1e-5)
        w = torch.randn_like(y_t)
        g_t = torch.autograd.grad((y_t * w).sum(), [x, *torch_path.parameters()])
        g_k = torch.autograd.grad((y_k * w).sum(), [x, *kernel.parameters()])
        for a, b in zip(g_k, g_t):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


_FAULTS = """
import resource, sys, torch
from forecast.allocator import retain_freed_memory
from forecast.model.backbones.mamba2 import Mamba2
if sys.argv[1] == "retain":
    assert retain_freed_memory()
torch.manual_seed(0)
model, x = Mamba2(32, n_layers=1, d_state=16, headdim=16), torch.randn(2, 16384, 32)
model(x).sum().backward()  # warm-up: the heap grows to its peak
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for step in range(3):  # each training step allocates and frees ~100 MB of activations
    model(x).sum().backward()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_retained_memory_is_reused_without_page_faults():
    """The CLI's allocator setting: after a warm-up step, three training steps fault in few new pages
    (0-25k seen); with glibc's defaults they map and fault in their activations again (>220k)."""
    faults = {}
    for mode in ["retain", "system"]:
        p = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr[-2000:]
        faults[mode] = int(p.stdout.split()[-1])
    assert faults["retain"] * 5 < faults["system"], faults


def test_bench_backbones_runs_without_extras_and_names_what_it_skipped(tmp_path, capsys):
    import importlib.util

    from omegaconf import OmegaConf

    from forecast.model.backbones.bench import backbones

    if importlib.util.find_spec("mambapy") is not None:
        pytest.skip("mambapy is installed: nothing to skip")
    cfg = OmegaConf.create(dict(lengths=[16], d_model=8, n_layers=1, batch=1, repeats=1, max_seconds=5, step_history=0,
                                out=str(tmp_path / "b.json"), threads=1, backbones={"transformer": {}, "mambapy": {}}))
    records = backbones(cfg)
    assert [r["backbone"] for r in records] == ["transformer"]
    assert "note: mambapy skipped: the mamba.py package is not installed" in capsys.readouterr().out
