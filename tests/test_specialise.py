"""`specialise` end to end on the tiny registered model test_predict trains (price, ticker, calendar;
no news): the last line; the routed model's forward equals each specialist on the requests routed to
it and the full model on the fallback ones, and the full model never sees a request a specialist
serves; `predict model=<routed>` writes the same kind of rows; a specialist whose slice holds no
request is reported and skipped; a router threshold outside (0, 1) is one error line."""
import re

import numpy as np
import polars as pl
import pytest
import torch
from mlflow.tracking import MlflowClient
from test_predict import rows, run_predict, trained_model

from conftest import cli

LAST = re.compile(r"served_by_specialists=([\d.]+) fallback=([\d.]+) compute_saved=(-?[\d.]+) speedup=([\d.]+|nan) "
                  r"ic_delta=([-+][\d.]+|[-+]?nan)")
QUICK = ["epochs=1", "latency.enabled=false", "dense.widths=[]", "curve=[0.3,0.7]",
         "specialists=[news_days,calm,no_news]", "specialists.calm.width=8", "specialists.no_news.width=8"]


def specialise(capsys, model, tmp_path, *args) -> tuple[int, list[str], str]:
    return cli(capsys, ["specialise", f"model={model['run_id']}", f"logger.tracking_uri={model['tracking_uri']}",
                        f"out={tmp_path}/out", *QUICK, *args])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return trained_model(tmp_path_factory)


def test_specialise_routes_registers_and_predict_serves_it(model, tmp_path, capsys):
    code, out, err = specialise(capsys, model, tmp_path)
    assert code == 0, (out[-5:], err[-2000:])
    served, fallback, saved, speedup, _ = LAST.match(out[-1]).groups()
    assert float(served) + float(fallback) == pytest.approx(1.0, abs=2e-3)
    assert any(line.startswith("specialist news_days:") and "skipped" in line for line in out), out
    client = MlflowClient(model["tracking_uri"])
    version = client.get_model_version_by_alias("forecast_routed", "routed")
    assert client.get_run(version.run_id).data.tags["forecast.source_run"] == model["run_id"]
    from forecast.tracking import runs

    routed = runs.load_model(version.run_id)
    check_pyfunc(model, version)
    assert list(routed.specialists) == ["calm", "no_news"]  # news_days (no request has news) skipped
    check_routes(routed, model)
    full_db, routed_db = tmp_path / "full.db", tmp_path / "routed.db"
    days = ["catch_up=true", "since=2018-11-01", "date=2018-12-27"]
    assert run_predict(capsys, model, full_db, f"model={model['run_id']}", *days)[0] == 0
    assert run_predict(capsys, model, routed_db, "model=models:/forecast_routed@routed", *days)[0] == 0
    full, mine = rows(full_db), rows(routed_db)
    assert mine.height == full.height > 20
    assert mine.columns == full.columns
    assert mine["model"].unique().to_list() == ["forecast_routed"]
    assert mine.select("ticker", "asof", "horizon").equals(full.select("ticker", "asof", "horizon"))
    assert np.isfinite(mine["forecast"].to_numpy()).all()
    check_drift_fallback(capsys, model, tmp_path, full, days)


def check_pyfunc(model, version) -> None:
    """The registered version is the pyfunc (`mlflow models serve -m models:/forecast_routed@routed`
    takes named inputs): it forecasts the test batch as the routed torch module does."""
    import mlflow

    from forecast.compress import accuracy
    from forecast.tracking import runs
    from forecast.training.train import build_data

    batch = accuracy.split(build_data(runs.stored_config(model["run_id"])), "test").batches[0]
    example = {k: v[:6].numpy() for k, v in batch.items()}
    pyfunc = mlflow.pyfunc.load_model("models:/forecast_routed@routed")
    assert sorted(s.name for s in pyfunc.metadata.signature.inputs.inputs) == sorted(batch)  # named inputs
    served = pyfunc.predict(example)
    with torch.no_grad():
        own = runs.load_model(version.run_id)(**{k: v[:6] for k, v in batch.items()}).double().numpy()
    state = runs.load_predict_state(version.run_id)
    np.testing.assert_allclose(served["forecast"].to_numpy(), own * state["target_std"], rtol=1e-5, atol=1e-9)


def check_drift_fallback(capsys, model, tmp_path, full, days) -> None:
    """After a drift alert of the full model (monitor's alerts table), the routed model's forecasts are
    the full model's own for `alert_sessions` sessions, and its specialists' elsewhere."""
    import datetime as dt

    from forecast.inference import predictions
    from forecast.monitoring import alerts

    db = tmp_path / "alerted.db"
    engine = predictions.connect(f"sqlite:///{db}")
    alerts.create(engine)
    name, version = "forecast", MlflowClient(model["tracking_uri"]).get_model_version_by_alias(
        "forecast", "champion").version
    asofs = [dt.date.fromisoformat(str(d)) for d in full["asof"].unique().sort().to_list()]
    alerts.write(engine, [dict(model=name, version=str(version), session=asofs[5], kind="performance",
                               feature="rank_ic", statistic=12.0, threshold=10.0, detail=None)])
    code, out, err = run_predict(capsys, model, db, "model=models:/forecast_routed@routed", *days)
    assert code == 0, err[-2000:]
    assert any(line.startswith("drift alert: the full model served every request on 20 of") for line in out), out
    mine = rows(db)
    alerted = pl.col("asof").is_between(pl.lit(str(asofs[5])), pl.lit(str(asofs[24])))
    same = mine.join(full, on=["ticker", "asof"], suffix="_full").with_columns(
        eq=(pl.col("forecast") - pl.col("forecast_full")).abs() < 1e-9)
    assert same.filter(alerted)["eq"].all()  # the full model's own forecasts under the alert
    assert not same.filter(~alerted)["eq"].all()  # the specialists' elsewhere


def check_routes(routed, model) -> None:
    """Each route's outputs are its own model's on its requests; the full model runs on fallback only."""
    from forecast.compress import accuracy
    from forecast.tracking import runs
    from forecast.training.train import build_data

    cfg = runs.stored_config(model["run_id"])
    batch = accuracy.split(build_data(cfg), "test").batches[0]
    cand, conf = routed.router.candidates(batch)
    routed.router.threshold = conf[cand >= 0].median()  # some candidates served, some sent to the full model
    route = routed.router(**batch)
    assert (route >= 0).any() and (route < 0).any(), route
    seen = []
    hook = routed.full.register_forward_hook(lambda m, args, kwargs, out: seen.append(len(kwargs["x"])),
                                             with_kwargs=True)
    with torch.no_grad():
        out = routed(**batch)
    hook.remove()
    assert seen == [int((route < 0).sum())]  # one call, on the fallback requests only
    with torch.no_grad():
        for code, sub in routed.models():
            idx = (route == code).nonzero().squeeze(1)
            if len(idx):
                own = sub(**{k: v[idx] for k, v in batch.items()})
                torch.testing.assert_close(out[idx], own)
        full = routed.full(**batch)
    assert not torch.allclose(out[route >= 0], full[route >= 0])  # the specialists' forecasts, not the full model's


def test_a_router_threshold_outside_0_1_is_one_error_line(model, tmp_path, capsys):
    for bad in ("1.5", "0", "-0.2"):
        code, out, err = specialise(capsys, model, tmp_path, f"router.threshold={bad}")
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: router.threshold:"), lines
