"""Every config group option composes and instantiates; experiments overlay the right keys."""
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from conftest import CONF

DIMS = dict(n_features=5, n_tickers=4, window=16)


def _compose(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml"))


@pytest.mark.parametrize("backbone", _options("model/backbone"))
def test_every_backbone_builds_a_forecaster_that_runs(backbone):
    cfg = _compose(f"model/backbone={backbone}", "model.d_model=32", "experiment=multi_ticker")
    model = instantiate(cfg.model, dims=DIMS)
    x, ticker = torch.randn(3, 16, 5), torch.tensor([0, 1, 3])  # (B, L, F), (B,)
    out = model(x, ticker)
    assert out.shape == (3,) and torch.isfinite(out).all()


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes_and_instantiates(experiment):
    cfg = _compose(f"experiment={experiment}")
    instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    [instantiate(c) for c in cfg.callbacks.values()]
    dm = instantiate(cfg.data)
    assert dm.tickers == (None if cfg.data.tickers is None else list(cfg.data.tickers))
    if not (Path(cfg.data.store) / "manifest.parquet").exists():
        pytest.skip(f"{cfg.data.store} is built by its experiment's runner")
    dm.setup()
    assert torch.isfinite(instantiate(cfg.model, dims=dm.dims)(**_batch(dm))).all()


def _batch(dm):
    batch = dm.dataset("train")[[0, 1]]
    return {k: v for k, v in batch.items() if k not in ("y", "row", "date")}


def test_multi_ticker_adds_the_ticker_encoder_and_uses_every_ticker():
    single, multi = _compose(), _compose("experiment=multi_ticker")
    assert list(instantiate(single.model, dims=DIMS).encoders) == ["price"]
    assert list(instantiate(multi.model, dims=DIMS).encoders) == ["price", "ticker"]
    assert multi.data.tickers is None and list(multi.data.modalities) == ["price", "ticker"]


def test_unknown_modality_names_the_key():
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException, match="modalities"):
        instantiate(_compose("modalities=[price,nope]").model, dims=DIMS)


@pytest.mark.parametrize("group", ["data", "trainer", "logger", "callbacks", "model/encoder", "model/head",
                                   "model/fusion", "model/optimizer"])
def test_every_group_has_options(group):
    assert _options(group), group
