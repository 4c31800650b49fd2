"""Pruning removes channels for real (torch-pruning), by magnitude; FLOPs are counted analytically
where FlopCounterMode sees nothing (LSTM); the distillation target blends only the training labels."""
import copy

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF
from forecast.compress import distill, flops, prune
from forecast.model.backbones.block import MLP

DIMS = dict(n_features=5, n_tickers=3, window=8)


def forecaster(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=["model.d_model=16", "modalities=[price,ticker]", *overrides])
    torch.manual_seed(0)
    return cfg, instantiate(cfg.model, dims=DIMS).eval()


def batch(n=4, length=8):
    g = torch.Generator().manual_seed(0)
    return dict(x=torch.randn(n, length, 5, generator=g), ticker=torch.randint(0, 3, (n,), generator=g))


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_pruning_removes_that_share_of_every_feed_forward_channel(ratio):
    _, model = forecaster("model/backbone=transformer")
    before = [m.fc.out_features for m in model.modules() if isinstance(m, MLP)]
    n_before = prune.n_params(model)
    prune.prune(model, ratio)
    after = [m.fc.out_features for m in model.modules() if isinstance(m, MLP)]
    assert after == [round(h * (1 - ratio)) for h in before]
    assert all(m.proj.in_features == m.fc.out_features for m in model.modules() if isinstance(m, MLP))
    assert prune.n_params(model) < n_before
    assert model(**batch()).shape == (4,)


def test_pruning_takes_the_weakest_channels_first():
    """Channels whose weights are zero carry nothing: removing exactly them changes no output."""
    torch.manual_seed(0)
    mlp = MLP(8, 4.0)
    with torch.no_grad():
        mlp.fc.weight[16:] = 0.0  # hidden channels 16..31 are dead
        mlp.fc.bias[16:] = 0.0
        mlp.proj.weight[:, 16:] = 0.0
    x = torch.randn(5, 8)
    ref = mlp(x)
    pruned = prune.prune(copy.deepcopy(mlp), 0.5)
    assert pruned.fc.out_features == 16
    torch.testing.assert_close(pruned(x), ref)


def test_ratio_zero_is_the_identity_and_a_bad_ratio_is_refused():
    _, model = forecaster("model/backbone=transformer")
    ref = model(**batch())
    torch.testing.assert_close(prune.prune(model, 0.0)(**batch()), ref)
    with pytest.raises(ValueError):
        prune.prune(model, 1.0)


def test_analytic_flops_count_the_lstm_that_flop_counter_mode_misses():
    _, model = forecaster("model/backbone=lstm", "model.backbone.n_layers=1")
    b = batch(n=3, length=8)
    analytic, counted = flops.flops_per_forecast(model, b), flops.flop_counter_check(model, b)
    lstm = model.backbone.blocks[0].mixer.lstm
    lstm_flops = 2 * 4 * 16 * (16 + 16) * 8  # per forecast: 8 positions
    assert analytic == pytest.approx(counted + lstm_flops, rel=1e-6)  # the Linears agree exactly
    assert lstm.hidden_size == 16


def test_analytic_flops_grow_as_the_square_of_the_window_for_attention():
    """f(L) = a + b L + 2*2*L^2*D: the second difference over L = 8, 16, 24 is attention's alone."""
    _, model = forecaster("model/backbone=transformer", "model.backbone.n_layers=1")
    f8, f16, f24 = (flops.flops_per_forecast(model, batch(length=n)) for n in (8, 16, 24))
    attention = lambda n: 2 * 2 * n * n * 16  # noqa: E731 - per forecast, d_model 16
    assert f24 - 2 * f16 + f8 == pytest.approx(attention(24) - 2 * attention(16) + attention(8), rel=1e-9)


class Data:
    """The few MarketData attributes distillation touches."""

    def __init__(self):
        self.targets = torch.arange(10, dtype=torch.float32)
        self.anchors = {"train": torch.tensor([0, 1, 2, 3]), "val": torch.tensor([6, 7]), "test": torch.tensor([9])}


def test_the_distillation_target_blends_the_training_labels_only_and_is_restored():
    dm, teacher = Data(), torch.full((4,), 100.0)
    original = dm.targets.clone()
    with distill.blended(dm, teacher, alpha=0.25):
        torch.testing.assert_close(dm.targets[:4], 0.25 * 100.0 + 0.75 * original[:4])
        torch.testing.assert_close(dm.targets[4:], original[4:])  # validation and test: the real label
    assert torch.equal(dm.targets, original)


def test_a_student_config_narrows_every_width_and_keeps_heads_dividing_it():
    cfg, _ = forecaster("model/backbone=transformer", "model.d_model=64", "model.backbone.n_heads=8")
    resolved = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    student = distill.student_model_config(resolved, width=12, depth=1, backbone=None)
    assert student.d_model == 12 and student.backbone.d_model == 12 and student.backbone.n_layers == 1
    assert 12 % student.backbone.n_heads == 0
    assert all(v == 12 for k, v in _walk(student) if k == "d_model")
    model = instantiate(student, dims=DIMS)
    assert model(**batch()).shape == (4,)
    swapped = distill.student_model_config(resolved, width=8, depth=1, backbone="lstm")
    assert swapped.backbone._target_.endswith("LSTM") and swapped.backbone.d_model == 8


def _walk(node, key=None):
    if hasattr(node, "items"):
        for k, v in node.items():
            yield from _walk(v, k)
    else:
        yield key, node
