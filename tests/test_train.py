"""End to end: `train` on the bundled sample with a tiny config, read back from a real MLflow store."""
import math
import re
import subprocess
import sys

import mlflow
import numpy as np
import polars as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from conftest import CONF, TINY
from forecast.training.train import train


def _cfg(uri, *overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=[*TINY, f"logger.tracking_uri={uri}", *overrides])


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp}/mlflow.db"
    cfg = _cfg(uri, f"trainer.default_root_dir={tmp}/ckpt")
    val_loss = train(cfg)
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("forecast").experiment_id])[0]
    return cfg, uri, client, run, val_loss


def test_run_holds_config_losses_metrics_and_baselines(tracked_run):
    cfg, uri, client, run, val_loss = tracked_run
    assert run.data.params["data.window"] == "16" and run.data.params["model.backbone._target_"]
    for key in ["train/loss", "val/loss"]:
        history = client.get_metric_history(run.info.run_id, key)
        assert len(history) == cfg.trainer.max_epochs and all(math.isfinite(m.value) for m in history)
    for name in ["mse", "mae", "dir_acc", "ic"]:
        assert f"test/{name}" in run.data.metrics
    for name in ["mse", "mae", "dir_acc"]:
        assert f"baseline/zero/test/{name}" in run.data.metrics
    assert run.data.metrics["baseline/zero/test/dir_acc"] == 0.5
    assert math.isfinite(val_loss)


def test_run_holds_artifacts_and_a_loadable_model(tracked_run, tmp_path):
    cfg, uri, client, run, _ = tracked_run
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    files |= {a.path for d in ["plots", "predictions"] for a in client.list_artifacts(run.info.run_id, d)}
    assert {"config.yaml", "plots/test_predictions.png", "predictions/test_predictions.parquet"} <= files
    preds = pl.read_parquet(client.download_artifacts(run.info.run_id, "predictions/test_predictions.parquet",
                                                      str(tmp_path)))
    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    from hydra.utils import instantiate

    from forecast.evaluation.calibration import Calibration
    dm = instantiate(cfg.data)
    dm.setup()
    batch = dm.dataset("test")[list(range(8))]
    with torch.no_grad():
        out = model(batch["x"], batch["ticker"]).double().numpy() * dm.target_std
    assert np.allclose(out, preds["pred_uncalibrated"][:8].to_numpy(), atol=1e-6)  # the raw module's forecast
    state = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/predict/state.json")
    calibrated = Calibration.from_state(state["calibration"]).point(out)  # calibrate=shrink_mean, the default
    assert state["calibration"]["method"] == "shrink_mean"
    assert np.allclose(calibrated, preds["pred"][:8].to_numpy(), atol=1e-6)
    assert preds.height == len(dm.anchors["test"])


def test_same_command_twice_gives_the_same_metrics(tracked_run, tmp_path):
    cfg, uri, client, run, _ = tracked_run
    train(_cfg(uri, f"trainer.default_root_dir={tmp_path}/ckpt"))
    runs = client.search_runs([run.info.experiment_id], order_by=["attributes.start_time ASC"])
    assert len(runs) == 2
    for key in ["test/mse", "test/ic", "test/dir_acc"]:
        assert runs[0].data.metrics[key] == runs[1].data.metrics[key]


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "forecast", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_cli_train_ends_with_the_run_line(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    p = _cli("train", *TINY, "experiment=multi_ticker", f"logger.tracking_uri={uri}",
             f"hydra.run.dir={tmp_path}/out", f"trainer.default_root_dir={tmp_path}/ckpt")
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.strip().splitlines()
    m = re.fullmatch(r"run_id=(\w+) tracking_uri=(\S+)", lines[-1])
    assert m and m.group(2) == uri
    assert any(line.startswith("hist_mean") for line in lines) and "mlflow ui --backend-store-uri" in p.stdout
    run = MlflowClient(uri).get_run(m.group(1))
    assert run.data.params["data.tickers_resolved"] == "GOOG,IXIC,SPX"


# Wrong values of every command and config group: tests/test_config_errors.py.


def test_cli_user_error_is_one_line_and_exit_code_2(tmp_path):
    p = _cli("train", "data.tickers=[SPX,NOPE]", f"hydra.run.dir={tmp_path}/out",
             f"logger.tracking_uri=sqlite:///{tmp_path}/m.db")
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "NOPE" in err[0], p.stderr
    assert "Traceback" not in p.stderr
