"""Walk-forward evaluation: folds tile the period and keep the purge; an oracle wins, a shuffled
forecast is called out; a 2-fold run on the sample lands in MLflow with every metric and artifact."""
import math
import re
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from conftest import CONF, TINY
from forecast.errors import ConfigError
from forecast.evaluation.baselines import baseline_predictions
from forecast.evaluation.evaluate import evaluate
from forecast.evaluation.report import walk_forward_report as report
from forecast.evaluation.scoring import score_walk_forward as score
from forecast.evaluation.walk_forward import fold_data, make_folds

SESSIONS = [date(2000, 1, 3) + timedelta(days=i) for i in range(1000)]
EV = OmegaConf.create(dict(strategy="sign", top_k=1, cost_bps=5, ic_window=21, ci=0.95, n_boot=200))
METRICS = ["mse", "mae", "dir_acc", "ic", "rank_ic", "icir", "sharpe", "ann_return", "max_drawdown", "turnover"]


def _cfg(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("evaluate", overrides=list(overrides))


@pytest.mark.parametrize("train_sessions", [None, 300])
def test_folds_tile_the_period_without_overlap(train_sessions):
    folds = make_folds(SESSIONS, SESSIONS[600], None, retrain_every=90, val_sessions=100,
                       train_sessions=train_sessions)
    assert folds[0].test_start == SESSIONS[600] and folds[-1].test_end is None
    assert [f.test_start for f in folds[1:]] == [f.test_end for f in folds[:-1]]  # contiguous, disjoint
    assert len(folds) == 4 and SESSIONS.index(folds[-1].test_start) == 870  # the 40-session remainder joined
    for f in folds:
        assert SESSIONS.index(f.test_start) - SESSIONS.index(f.val_start) == 100
        if train_sessions is None:
            assert f.train_start is None
        else:
            assert SESSIONS.index(f.val_start) - SESSIONS.index(f.train_start) == train_sessions


def test_fold_settings_that_cannot_work_name_their_key():
    with pytest.raises(ConfigError, match="start"):
        make_folds(SESSIONS, SESSIONS[50], None, retrain_every=90, val_sessions=100)
    with pytest.raises(ConfigError, match="retrain_every"):
        make_folds(SESSIONS, SESSIONS[600], None, retrain_every=0, val_sessions=100)


@pytest.mark.parametrize("horizon,embargo", [(1, 0), (5, 3)])
def test_fold_splits_keep_the_purge_and_test_anchors_are_forecast_once(horizon, embargo):
    cfg = _cfg("data.window=16", f"data.horizon={horizon}")
    sessions = sorted(pl.read_parquet("data/sample/prices/ticker=SPX/*.parquet")["date"].to_list())
    folds = make_folds(sessions, date(2015, 1, 1), date(2016, 1, 1), retrain_every=63, val_sessions=126)
    purge = horizon + embargo
    seen = []
    for fold in folds:
        f = fold_data(cfg, fold, purge).frame.with_columns(pos=pl.int_range(pl.len()))
        pos = {s: f.filter(pl.col("split") == s)["pos"] for s in ("train", "val", "test")}
        assert pos["train"].max() + purge < pos["val"].min() and pos["val"].max() + purge < pos["test"].min()
        test = f.filter(pl.col("split") == "test")["date"]
        assert test.min() >= fold.test_start and (fold.test_end is None or test.max() < fold.test_end)
        seen += test.to_list()
    expected = [d for d in sessions if date(2015, 1, 1) <= d < date(2016, 1, 1)]
    assert seen == expected  # every session of the period forecast exactly once, in order


@pytest.fixture(scope="module")
def fold_frame():
    """One real fold of SPX with the naive and ridge baselines' forecasts."""
    cfg = _cfg("data.window=16")
    sessions = sorted(pl.read_parquet("data/sample/prices/ticker=SPX/*.parquet")["date"].to_list())
    fold = make_folds(sessions, date(2014, 1, 1), date(2016, 1, 1), retrain_every=504, val_sessions=252)[0]
    dm = fold_data(cfg, fold, 1)
    frame = dm.frame.filter(pl.col("split") == "test").select("ticker", "date", realised=pl.col("target"))
    preds, _ = baseline_predictions(dm.frame, ["zero", "hist_mean", "ridge"])
    noisy = frame["realised"] * 0.3 + np.random.default_rng(0).normal(0, 0.01, frame.height)  # a decent rival
    return frame.with_columns(pred_transformer=noisy, **{f"pred_{n}": s for n, s in preds.items()})


def test_an_oracle_scores_ic_one_and_beats_every_baseline(fold_frame):
    frame = fold_frame.with_columns(pred=pl.col("realised"))
    results = score(frame, ["model", "transformer", "zero", "hist_mean", "ridge"], EV, 1)
    assert results["model"]["ic"] == pytest.approx(1) and results["model"]["rank_ic"] == pytest.approx(1)
    text = report(results, {})
    assert "the model beats every baseline" in text and "NOT better" not in text
    assert "significantly lower" in text and results["model"]["ic_low"] > 0.99
    assert "beats every baseline" not in report({"model": results["model"]}, {})  # nothing to beat


def test_a_shuffled_forecast_scores_ic_zero_and_is_called_not_better(fold_frame):
    frame = fold_frame.with_columns(pred=pl.col("realised").shuffle(seed=0))
    results = score(frame, ["model", "transformer", "zero", "hist_mean", "ridge"], EV, 1)
    assert abs(results["model"]["ic"]) < 0.1
    text = report(results, {})
    assert "the model is NOT better than 'zero'" in text and "beats every baseline" not in text
    assert "no evidence that the model's MSE is lower" in text
    assert results["model"]["ic_low"] < 0 < results["model"]["ic_high"]


def test_topk_with_one_ticker_names_the_key():
    with pytest.raises(ConfigError, match="evaluate.strategy"):
        evaluate(_cfg(*TINY, "evaluate.strategy=topk"))


def test_two_fold_evaluate_logs_model_and_baselines_to_mlflow(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg_args = [*TINY, f"logger.tracking_uri={uri}", f"trainer.default_root_dir={tmp_path}/ckpt",
                "evaluate.start=2017-01-01", "evaluate.end=2018-01-01", "evaluate.retrain_every=126",
                "evaluate.val_sessions=252", "evaluate.n_boot=100",
                "calibrate=none"]  # calibrated, a 2-epoch model is the constant hist_mean: no IC to log
    mse = evaluate(_cfg(*cfg_args))
    out = capsys.readouterr().out.strip().splitlines()
    m = re.fullmatch(r"run_id=(\w+) tracking_uri=(\S+)", out[-1])
    assert m and m.group(2) == uri and any(line.startswith("transformer") for line in out)
    client = MlflowClient(uri)
    run = client.get_run(m.group(1))
    metrics = run.data.metrics
    assert metrics["test/mse"] == pytest.approx(mse)
    assert {f"test/{k}" for k in METRICS} <= set(metrics)
    for baseline in ["ridge", "transformer"]:
        assert {f"baseline/{baseline}/test/{k}" for k in METRICS} <= set(metrics)
    for constant in ["zero", "hist_mean"]:  # constant within a fold: no IC to log
        assert {f"baseline/{constant}/test/{k}" for k in METRICS if "ic" not in k} <= set(metrics)
    assert metrics["baseline/zero/test/dir_acc"] == 0.5 and math.isfinite(metrics["baseline/transformer/test/ic"])
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert sorted(c.info.run_name for c in children) == ["fold 0 model", "fold 0 transformer",
                                                        "fold 1 model", "fold 1 transformer"]
    assert all(client.get_metric_history(c.info.run_id, "val/loss") for c in children)
    files = {a.path for d in ["", "plots", "predictions"] for a in client.list_artifacts(run.info.run_id, d or None)}
    assert {"folds.csv", "report.txt", "config.yaml", "plots/cumulative_return.png", "plots/rolling_ic.png",
            "plots/pred_vs_realised.png", "predictions/oos_predictions.parquet"} <= files
    preds = pl.read_parquet(client.download_artifacts(run.info.run_id, "predictions/oos_predictions.parquet",
                                                      str(tmp_path)))
    assert preds.select("ticker", "date").is_duplicated().sum() == 0 and preds["fold"].unique().to_list() == [0, 1]
    assert preds["date"].min() >= date(2017, 1, 1) and preds["date"].max() < date(2018, 1, 1)
    # the folds above ran in worker processes (one per core); in this process they give the same
    uri1 = f"sqlite:///{tmp_path}/sequential.db"
    assert evaluate(_cfg(*[o for o in cfg_args if "tracking_uri" not in o], f"logger.tracking_uri={uri1}",
                         "evaluate.workers=1")) == pytest.approx(mse, rel=1e-6)


def test_workers_must_be_positive():
    with pytest.raises(ConfigError, match="evaluate.workers"):
        evaluate(_cfg(*TINY, "evaluate.workers=0"))


def test_a_config_error_crosses_the_process_boundary_of_a_fold_worker():
    """Fold workers return their errors pickled (as ProcessPoolExecutor does); a ConfigError must come
    back with its key and message, so the CLI still prints one line naming the key."""
    import pickle

    err = pickle.loads(pickle.dumps(ConfigError("evaluate", "fold 0 {...}: train split is empty")))
    assert isinstance(err, ConfigError) and err.key == "evaluate" and str(err).startswith("evaluate: fold 0")
