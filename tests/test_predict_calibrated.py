"""Calibration travels with the model: train fits it on validation and stores it in the predict state;
predict and the served pyfunc apply it, so the daily forecasts are the ones that were scored."""
import json

import mlflow
import numpy as np
import polars as pl
import pytest
from mlflow.tracking import MlflowClient
from test_predict import TEST, TICKERS, VAL, copy_store, rows, run_predict

from conftest import CONF, TINY
from forecast.evaluation import adaptive
from forecast.evaluation.calibration import Calibration, anchor_volatility, window_volatility


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A tiny registered model with a quantile head, calibrated the default way (shrink_mean)."""
    from hydra import compose, initialize_config_dir

    from forecast.training.train import train

    base = tmp_path_factory.mktemp("calibrated")
    store, uri = copy_store(base / "store"), f"sqlite:///{base}/mlflow.db"
    overrides = [*TINY, f"data.store={store}", f"data.tickers=[{','.join(TICKERS)}]", "model/head=quantile",
                 f"data.val_start={VAL}", f"data.test_start={TEST}", "register=true", "calibrate=shrink_mean",
                 f"logger.tracking_uri={uri}", f"trainer.default_root_dir={base}/ckpt"]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        train(compose("train", overrides=overrides))
    run_id = MlflowClient(uri).get_model_version_by_alias("forecast", "champion").run_id
    mlflow.set_tracking_uri(uri)
    logged = pl.read_parquet(mlflow.artifacts.download_artifacts(
        f"runs:/{run_id}/predictions/test_predictions.parquet", dst_path=str(base)))
    state = mlflow.artifacts.load_dict(f"runs:/{run_id}/predict/state.json")
    return dict(store=store, tracking_uri=uri, run_id=run_id, logged=logged, state=state)


def test_train_stores_the_calibration_it_scored(calibrated):
    cal = calibrated["state"]["calibration"]
    metrics = MlflowClient(calibrated["tracking_uri"]).get_run(calibrated["run_id"]).data.metrics
    assert cal["method"] == "shrink_mean" and cal["anchor"] == calibrated["state"]["target_mean"]
    assert cal["scale"] == pytest.approx(metrics["calibration/scale"]) and 0.0 <= cal["scale"] < 1.0
    assert cal["quantiles"] in ("spread", "volatility") and cal["taus"] == [0.1, 0.5, 0.9]
    logged = calibrated["logged"]
    assert not np.allclose(logged["pred"], logged["pred_uncalibrated"])  # the scored forecast is calibrated
    assert np.allclose(logged["pred"], Calibration.from_state(cal).point(logged["pred_uncalibrated"].to_numpy()))


def test_predict_writes_the_calibrated_forecasts_and_quantiles_train_scored(calibrated, tmp_path, capsys):
    """Served from the first test session on, the adapted quantiles are those train scored; a rerun of
    an early session (its later sessions served) writes nothing new."""
    db = tmp_path / "p.db"
    code, _, err = run_predict(capsys, calibrated, db, "model=models:/forecast@champion", "catch_up=true",
                               "date=2017-07-31")
    assert code == 0, err
    assert calibrated["state"]["calibration"]["adaptive"] > 0
    before = rows(db)
    code, out, err = run_predict(capsys, calibrated, db, "model=models:/forecast@champion", "date=2016-06-01")
    assert code == 0 and "updated" not in out, err
    assert rows(db).equals(before)
    got = rows(db).with_columns(pl.col("asof").str.to_date().alias("date"))
    got = got.with_columns(*[pl.col("quantiles").map_elements(lambda q, k=k: json.loads(q)[k], return_dtype=pl.Float64)
                             .alias(f"got_{k}") for k in ("q10", "q50", "q90")])
    both = got.join(calibrated["logged"], on=["ticker", "date"], how="inner")
    assert both.height == got.height > 0
    assert np.allclose(both["forecast"], both["pred"], rtol=0, atol=1e-6)
    assert not np.allclose(both["forecast"], both["pred_uncalibrated"], rtol=0, atol=1e-6)
    for k in ("q10", "q50", "q90"):
        assert np.allclose(both[f"got_{k}"], both[k], rtol=0, atol=1e-6), k
    assert (both["got_q10"] <= both["got_q50"]).all() and (both["got_q50"] <= both["got_q90"]).all()


def test_the_served_pyfunc_gives_the_same_calibrated_forecasts(calibrated):
    """The pyfunc's input example is the first two test windows: its output is their logged forecasts
    (the quantiles before the adaptation that needs served history)."""
    pyfunc = mlflow.pyfunc.load_model("models:/forecast@champion")
    out = pyfunc.predict(pyfunc.input_example)
    first = calibrated["logged"].head(2)
    assert np.allclose(out["forecast"], first["pred"], rtol=0, atol=1e-7)
    # A window alone has no served history: the pyfunc's quantiles are the calibrated ones, which the
    # outcomes before an anchor widen into the logged (adapted) ones. From each window's own returns,
    # as float32 inputs: 1e-5 relative.
    taus, gamma = [0.1, 0.5, 0.9], calibrated["state"]["calibration"]["adaptive"]
    served, logged = out[["q10", "q50", "q90"]].to_numpy(), first.select("q10", "q50", "q90").to_numpy()
    assert np.allclose(served[0], logged[0], rtol=1e-5, atol=1e-8)
    assert first["ticker"][0] == first["ticker"][1]
    th = adaptive.theta(logged[:1], first["realised"].to_numpy()[:1], taus, gamma)
    assert np.allclose(adaptive.widen(served[1:], th, taus), logged[1:], rtol=1e-5, atol=1e-8)


def test_window_volatility_is_the_ewm_of_the_window():
    """The fast path (one weighted sum) equals polars' EWMA (adjust=True) over each window alone."""
    rng = np.random.default_rng(0)
    ret = rng.standard_t(3, size=(20, 32)) * 0.01  # (N, L)
    ref = [pl.Series(r ** 2).ewm_mean(half_life=10.0)[-1] ** 0.5 for r in ret]
    assert np.allclose(window_volatility(ret), ref, rtol=1e-12)
    assert np.allclose(window_volatility(ret, horizon=4), 2 * np.asarray(ref), rtol=1e-12)
    column = ret.reshape(-1)  # windows of a return column end at their anchor rows, the anchor included
    anchors = np.array([31, 63, 100])
    windows = column[anchors[:, None] - np.arange(31, -1, -1)]  # (3, 32)
    assert np.allclose(anchor_volatility(column, anchors, 32, 1), window_volatility(windows))
    assert anchor_volatility(column, np.array([63]), 32, 1)[0] == pytest.approx(window_volatility(ret[1:2])[0])


def test_a_model_stored_without_a_calibration_forecasts_raw():
    cal = Calibration.from_state(None)
    f, q = np.array([0.01, -0.02]), np.array([[-0.01, 0.0, 0.01], [-0.03, -0.02, -0.01]])
    assert (cal.point(f) == f).all() and (cal.quantile(q, np.ones(2)) == q).all()
    vol = Calibration(quantiles="volatility", taus=[0.1, 0.5, 0.9], levels=[-1.2, 0.0, 1.3], sigma_default=0.02)
    assert np.allclose(vol.quantile(q, np.array([0.0, 0.01])), [[-0.024, 0.0, 0.026], [-0.032, -0.02, -0.007]])
