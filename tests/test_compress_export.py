"""ONNX export of every backbone, as each declares it (`EXPORTABLE`): the graph matches torch within
`export.TOLERANCE` in onnxruntime, at another batch size, and at another window length where the
time axis is declared free; int8 weights shrink the file and keep the forecasts; the file runs in
onnxruntime alone (no torch, no project code) with its data state in its metadata."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from conftest import CONF
from forecast.compress import export, quantize

DIMS = dict(n_features=5, n_tickers=3, window=8)
STATE = dict(target_std=2.0, window=8)
BACKBONES = ["transformer", "lstm", "linear_attention", "mamba", "mamba2"]


def forecaster(backbone: str):
    extra = ["model.backbone.headdim=16"] if backbone == "mamba2" else []
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[f"model/backbone={backbone}", "model.d_model=16",
                                          "model.backbone.n_layers=1", "modalities=[price,ticker]", *extra])
    torch.manual_seed(0)
    return instantiate(cfg.model, dims=DIMS).eval()


def batch(n: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(n, length, 5, generator=g), ticker=torch.randint(0, 3, (n,), generator=g))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{backbone: (model, path)}: each exported once for the tests of this module."""
    out = tmp_path_factory.mktemp("onnx")
    models = {b: forecaster(b) for b in BACKBONES}
    return {b: (m, export.export(m, batch(3, 8), out / f"{b}.onnx", STATE)) for b, m in models.items()}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_each_backbone_exports_as_it_declares_and_matches_torch(backbone, exported):
    model, path = exported[backbone]
    kind = export.exportable(model)
    assert kind in ("dynamic", "fixed"), f"{backbone} declares no EXPORTABLE"
    lengths = [8, 13] if kind == "dynamic" else [8]
    for length in lengths:
        assert export.parity(model, path, [batch(5, length, seed=length)]) <= export.TOLERANCE
    time_axis = export.session(path).get_inputs()[0].shape[1]
    assert (isinstance(time_axis, str)) == (kind == "dynamic"), time_axis
    score, forecast = export.session(path).run(["score", "forecast"], {k: v.numpy() for k, v in batch(4, 8).items()})
    np.testing.assert_allclose(forecast, score * STATE["target_std"], rtol=1e-6)  # log-return units


def test_int8_shrinks_the_file_and_keeps_the_forecasts(exported, tmp_path):
    model, path = exported["transformer"]
    q = quantize.int8(path, tmp_path / "q.onnx")
    assert q.stat().st_size < path.stat().st_size
    b = batch(64, 8, seed=3)
    ref, got = model(**b).detach().numpy(), export.run(export.session(q), b)
    assert np.corrcoef(ref, got)[0, 1] > 0.99
    assert np.abs(ref - got).max() < 0.1 * np.abs(ref).max()


def test_the_file_runs_in_onnxruntime_alone(exported):
    _, path = exported["transformer"]
    code = f"""
import json, sys, numpy as np, onnxruntime as ort
sess = ort.InferenceSession({str(path)!r})
state = json.loads(sess.get_modelmeta().custom_metadata_map["forecast.predict_state"])
x = np.random.default_rng(0).standard_normal((3, state["window"], 5)).astype(np.float32)
out, = sess.run(["forecast"], {{"x": x, "ticker": np.zeros(3, dtype=np.int64)}})
assert out.shape == (3,) and np.isfinite(out).all()
assert not {{"torch", "forecast"}} & set(sys.modules), sorted(m for m in sys.modules if "torch" in m)
print(json.dumps(state))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == STATE


def test_the_news_encoders_export_path_equals_its_eager_path(monkeypatch):
    """Exported graphs compute every step and mask after (no data-dependent shapes): same values."""
    from forecast.model.encoders.news import NewsEncoder

    torch.manual_seed(0)
    enc = NewsEncoder(dims={}, d_model=8, n_buckets=64, d_embed=8).eval()
    tokens = torch.randint(1, 500, (4, 6, 3)) * (torch.rand(4, 6, 1) < 0.4)  # (B, L, K), most steps empty
    b = dict(x=torch.zeros(4, 6, 5), news_tokens=tokens.int(), news_weights=torch.rand(4, 6, 3))
    eager, mask = enc(b)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    dense, dense_mask = enc(b)
    assert torch.equal(mask, dense_mask) and mask.any() and not mask.all()
    torch.testing.assert_close(dense, eager, atol=1e-6, rtol=1e-5)
