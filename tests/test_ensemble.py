"""Seed ensembles (`model.ensemble=N`): one member is the single model, members differ, the forecast is
their mean, each member learns from its own loss alone, and an ensemble trains, registers and predicts."""
import sqlite3

import lightning as L
import mlflow
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from conftest import CONF, TINY, cli
from forecast.model import ensemble
from forecast.model.forecaster import Forecaster

DIMS = dict(n_features=5, n_tickers=4, window=16)


def _cfg(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=["experiment=multi_ticker", "model.d_model=16", *overrides])


def _batch(n: int = 8) -> dict:
    g = torch.Generator().manual_seed(1)
    return dict(x=torch.randn(n, 16, 5, generator=g), ticker=torch.randint(1, 4, (n,), generator=g),
                y=torch.randn(n, generator=g))  # (B, L, F), (B,), (B,)


def test_an_ensemble_of_one_is_the_single_model():
    cfg = _cfg()
    L.seed_everything(3, verbose=False)
    one = ensemble.build(cfg.model, DIMS)
    L.seed_everything(3, verbose=False)
    single = instantiate(cfg.model, dims=DIMS)
    assert type(one) is Forecaster
    assert all(torch.equal(a, b) for a, b in zip(one.state_dict().values(), single.state_dict().values()))


def test_members_differ_and_the_forecast_is_their_mean():
    cfg = _cfg("model.ensemble=3", "model/head=quantile")
    L.seed_everything(3, verbose=False)
    model = ensemble.build(cfg.model, DIMS).eval()
    L.seed_everything(3, verbose=False)
    first = instantiate(cfg.model, dims=DIMS, ensemble=1).eval()
    assert len(model.members) == 3 and model.hparams["ensemble"] == 3
    assert all(torch.equal(a, b) for a, b in zip(model.members[0].state_dict().values(), first.state_dict().values()))
    w = [m.state_dict() for m in model.members]
    drawn = [k for k in w[0] if k.endswith("proj.weight")]  # randomly initialised (norms, A_log, D are not)
    assert drawn and not any(torch.equal(w[0][k], w[i][k]) for k in drawn for i in (1, 2))
    inputs = {k: v for k, v in _batch().items() if k != "y"}
    with torch.no_grad():
        out, each = model(**inputs), torch.stack([m(**inputs) for m in model.members])  # (B, Q), (N, B, Q)
    torch.testing.assert_close(out, each.mean(0))
    assert (out.diff(dim=1) >= 0).all()  # averaged level by level, the quantiles stay ordered
    assert model.head is model.members[0].head


def test_each_member_learns_from_its_own_loss_alone():
    cfg = _cfg("model.ensemble=2")
    L.seed_everything(3, verbose=False)
    model = ensemble.build(cfg.model, DIMS).eval()  # no dropout draws: the two passes see the same net
    batch = _batch()
    model.training_step(batch, 0).backward()
    joint = [[p.grad.clone() for p in m.parameters() if p.grad is not None] for m in model.members]
    for i, m in enumerate(model.members):
        model.zero_grad()
        m.head.loss(m(batch["x"], batch["ticker"]), batch["y"]).backward()
        alone = [p.grad for p in m.parameters() if p.grad is not None]
        assert len(alone) == len(joint[i]) > 0
        for a, b in zip(alone, joint[i]):
            torch.testing.assert_close(a, b)
        other = model.members[1 - i]
        assert all(p.grad is None or not p.grad.any() for p in other.parameters())


def test_a_forecaster_refuses_to_be_an_ensemble_by_itself():
    with pytest.raises(Exception, match="model.ensemble: 2: a seed ensemble is built by"):
        instantiate(_cfg("model.ensemble=2").model, dims=DIMS)  # Hydra wraps the ConfigError


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> dict:
    from forecast.training.train import train

    base = tmp_path_factory.mktemp("ensemble")
    uri = f"sqlite:///{base}/mlflow.db"
    overrides = [*TINY, "model.ensemble=2", "modalities=[price,ticker]", "register=true",
                 f"logger.tracking_uri={uri}", f"trainer.default_root_dir={base}/ckpt"]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        train(compose("train", overrides=overrides))
    return dict(uri=uri, base=base)


def test_an_ensemble_trains_registers_and_predicts(registered, capsys):
    from forecast.tracking import runs

    mlflow.set_tracking_uri(registered["uri"])
    model = runs.load_model("models:/forecast@champion")
    assert isinstance(model, ensemble.Ensemble) and len(model.members) == 2
    db = registered["base"] / "predictions.db"
    code, out, err = cli(capsys, ["predict", f"logger.tracking_uri={registered['uri']}",
                                  f"predictions.url=sqlite:///{db}", "date=2018-12-27"])
    assert code == 0 and out[-1].startswith("predictions="), (out, err)
    with sqlite3.connect(db) as con:
        n, finite = con.execute("SELECT count(*), sum(forecast = forecast) FROM predictions").fetchone()
    assert n > 0 and finite == n


def test_compress_names_the_ensemble_in_one_line(registered, capsys):
    code, out, err = cli(capsys, ["compress", f"logger.tracking_uri={registered['uri']}",
                                  f"out={registered['base']}/compress"])
    assert code == 2 and "model.ensemble" in err and len(err.splitlines()) == 1, err
