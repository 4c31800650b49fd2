"""The step function: stepping a window bar by bar equals the full forward (in torch, and as ONNX in
onnxruntime with the state fed back), for every backbone with a fixed-shape state; the Transformer's
growing KV cache is refused in one line."""
import json

import numpy as np
import onnx
import pytest
import torch
from test_compress_export import STATE, batch, forecaster

from forecast.compress import export, step

STEPPABLE = ["lstm", "linear_attention", "mamba", "mamba2"]


@pytest.mark.parametrize("backbone", STEPPABLE)
def test_stepping_a_window_equals_the_full_forward(backbone):
    model, b = forecaster(backbone), batch(4, 8, seed=1)
    with torch.no_grad():
        full = model(**b)  # (B,)
    torch.testing.assert_close(step.step_torch(model, b), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backbone", STEPPABLE)
def test_the_exported_step_fed_its_own_state_matches_torch(backbone, tmp_path):
    model, b = forecaster(backbone), batch(5, 8, seed=2)
    path = step.export_step(model, batch(3, 8), tmp_path / "step.onnx", STATE)
    sess = export.session(path)
    leaves = [v.numpy() for v in step.initial_state(model, 5)]
    names = [i.name for i in sess.get_inputs()]
    for t in range(8):
        inputs = {k: v.numpy() for k, v in step.bar(b, t).items()}
        score, forecast, *leaves = sess.run(None, {**inputs, **dict(zip(names[len(inputs):], leaves))})
    with torch.no_grad():
        ref = model(**b).numpy()
    assert np.abs(score - ref).max() <= export.TOLERANCE
    np.testing.assert_allclose(forecast, score * STATE["target_std"], rtol=1e-6)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert len(json.loads(meta["forecast.step_state"])["shapes"]) == len(leaves)


def test_a_growing_cache_is_refused():
    model = forecaster("transformer")
    assert not step.steppable(model)
    with pytest.raises(ValueError, match="Transformer has no fixed-shape step state"):
        step.export_step(model, batch(3, 8), None, STATE)
