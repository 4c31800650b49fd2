"""Experiments at the scale of use: a killed run resumes to the same result, a sweep is one parent
run with a child per trial and registers its best, DDP on 2 CPU processes logs one run, and a
model starts from another run's weights. Every command runs as a user runs it: the package
installed (not editable) and the working directory outside the repository."""
import re
import signal
import subprocess
import sys
import time

import mlflow
import numpy as np
import polars as pl
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import TINY
from forecast.tracking.runs import load_model

FAST = [*TINY, "model/backbone=transformer"]
RUN: dict = {}  # env and cwd of the installed copy


@pytest.fixture(autouse=True)
def _from_an_installed_copy(installed, tmp_path_factory):
    RUN.update(env=installed, cwd=tmp_path_factory.mktemp("cwd"))


def test_the_installed_package_trains_from_any_folder():
    """Configs and the bundled sample come from the installed package; what the run writes stays here."""
    probe = "import forecast.resources as r; print(r.conf_dir(), r.sample_store())"
    where = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, **RUN)
    site = RUN["env"]["PYTHONPATH"]
    assert all(path.startswith(site) for path in where.stdout.split()), where.stdout
    p = subprocess.run([sys.executable, "-m", "forecast", "train", *FAST], capture_output=True, text=True,
                       timeout=600, env=RUN["env"], cwd=RUN["cwd"])
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1].endswith("tracking_uri=sqlite:///mlflow.db")
    assert (RUN["cwd"] / "mlflow.db").exists() and (RUN["cwd"] / "checkpoints").is_dir()


def _cmd(tmp, *args):
    return [sys.executable, "-m", "forecast", "train", *FAST, f"logger.tracking_uri=sqlite:///{tmp}/m.db",
            f"trainer.default_root_dir={tmp}/ckpt", f"hydra.run.dir={tmp}/out", *args]


def _train(tmp, *args) -> tuple[str, str]:
    """(run_id, stderr) of a `forecast train` that must succeed."""
    p = subprocess.run(_cmd(tmp, *args), capture_output=True, text=True, timeout=600, **RUN)
    assert p.returncode == 0, p.stderr[-3000:]
    return re.search(r"run_id=(\w+)", p.stdout.strip().splitlines()[-1]).group(1), p.stderr


def _run(tmp, *args):
    return _train(tmp, *args)[0]


def _metrics(tmp, run_id):
    return MlflowClient(f"sqlite:///{tmp}/m.db").get_run(run_id).data.metrics


def _epochs_done(tmp) -> int:
    """Epochs in the run's last.ckpt (written atomically, so it is whole whenever it exists)."""
    last = list(tmp.glob("ckpt/*/*/checkpoints/last.ckpt"))
    return torch.load(last[0], map_location="cpu", weights_only=False)["epoch"] + 1 if last else 0


def test_killed_run_resumes_to_the_same_metrics(tmp_path):
    long = ["trainer.max_epochs=5", "callbacks.early_stopping.patience=100", "model.head.dropout=0.2",
            "+callbacks.ema._target_=lightning.pytorch.callbacks.EMAWeightAveraging"]  # its average resumes too
    whole = _run(tmp_path / "a", *long)
    b = tmp_path / "b"
    proc = subprocess.Popen(_cmd(b, *long), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **RUN)
    deadline = time.time() + 300
    while _epochs_done(b) < 2 and time.time() < deadline:  # killed after epoch 2 of 5 is checkpointed
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    client = MlflowClient(f"sqlite:///{b}/m.db")
    killed = client.search_runs([client.get_experiment_by_name("forecast").experiment_id])[0]
    assert killed.info.status == "RUNNING" and "test/mse" not in killed.data.metrics
    resumed, stderr = _train(b, "resume=last")  # given without `long`
    assert resumed == killed.info.run_id  # the same MLflow run continues, with its own config
    assert "not applied: " in stderr and "trainer.max_epochs=2 (run: 5)" in stderr  # the given values are named
    a_m, b_m = _metrics(tmp_path / "a", whole), _metrics(b, resumed)
    for key in ["test/mse", "baseline/uncalibrated/test/ic", "calibration/scale", "val/best_loss"]:
        assert a_m[key] == pytest.approx(b_m[key], rel=1e-6, abs=1e-12), key
    steps = [m.step for m in client.get_metric_history(resumed, "val/loss")]
    assert len(steps) == 5 and len(set(steps)) == 5  # one value per epoch, none duplicated
    assert 0 < b_m["perf/checkpoint_fraction"] < 1


def test_a_resumed_logger_logs_each_epoch_once(tmp_path):
    """The epoch re-run after a crash (its metrics were logged, its checkpoint not yet written)."""
    from forecast.tracking.logger import RunLogger

    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    for step in range(3):
        client.log_metric(run_id, "val/loss", 1.0 / (step + 1), step=step)
    logger = RunLogger(experiment_name="e", tracking_uri=uri, run_id=run_id)
    logger.log_metrics({"val/loss": 1 / 3, "train/loss": 0.5}, step=2)  # epoch 2 again
    logger.log_metrics({"val/loss": 0.25, "train/loss": 0.4}, step=3)
    assert [m.step for m in client.get_metric_history(run_id, "val/loss")] == [0, 1, 2, 3]
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [2, 3]


def test_optuna_sweep_is_one_parent_with_three_children_and_a_champion(tmp_path):
    p = subprocess.run(_cmd(tmp_path, "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", "register=true",
                            f"hydra.sweep.dir={tmp_path}/sweep"), capture_output=True, text=True, timeout=900, **RUN)
    assert p.returncode == 0, p.stderr[-3000:]
    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("forecast").experiment_id])
    parents = [r for r in runs if r.data.tags.get("forecast.role") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3 and len(runs) == 4
    best = min(children, key=lambda r: r.data.metrics["val/best_loss"])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert parent.data.metrics["best/val/best_loss"] == best.data.metrics["val/best_loss"]
    assert "sweep_comparison.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    champion = client.get_model_version_by_alias("forecast", "champion")
    assert champion.run_id == best.info.run_id
    # the champion gives exactly the predictions its run logged
    mlflow.set_tracking_uri(uri)
    model = load_model("models:/forecast@champion")  # the torch module of the champion's run
    logged = pl.read_parquet(client.download_artifacts(best.info.run_id, "predictions/test_predictions.parquet",
                                                       str(tmp_path)))
    _check_predictions(model, best, logged)
    served = mlflow.pyfunc.load_model("models:/forecast@champion")  # the registered version is the pyfunc
    assert {s.name for s in served.metadata.signature.inputs.inputs} >= {"x", "ticker"}


def _check_predictions(model, run, logged):
    from forecast.data.market import MarketData
    from forecast.resources import sample_store

    p = run.data.params
    dm = MarketData(sample_store(), ["SPX"], window=int(p["data.window"]), val_start=p["data.val_start_resolved"],
                    test_start=p["data.test_start_resolved"])
    dm.setup()
    batch = dm.dataset("test")[list(range(16))]
    with torch.no_grad():
        out = model(batch["x"], batch["ticker"]).double().numpy() * dm.target_std
    assert np.allclose(out, logged["pred_uncalibrated"][:16].to_numpy(), atol=1e-7)  # the raw module's forecast


def test_ddp_on_two_cpu_processes_logs_one_run(tmp_path):
    run_id = _run(tmp_path, "trainer=ddp", "trainer.max_epochs=1")
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    runs = client.search_runs([client.get_experiment_by_name("forecast").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    assert runs[0].data.params["trainer.strategy"] == "ddp" and "test/mse" in runs[0].data.metrics


def test_ddp_on_ticker_shards_trains_and_tests_every_ticker(tmp_path):
    run_id = _run(tmp_path, "trainer=ddp", "trainer.max_epochs=1", "experiment=multi_ticker", "data.shard_tickers=true")
    run = MlflowClient(f"sqlite:///{tmp_path}/m.db").get_run(run_id)
    assert run.data.params["data.shard_tickers"] == "True" and "test/mse" in run.data.metrics
    logged = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="predictions/test_predictions.parquet",
                                                 tracking_uri=f"sqlite:///{tmp_path}/m.db", dst_path=str(tmp_path))
    # rank 0 trained on IXIC and GOOG (the plan balances rows), then read every ticker for the test;
    # GOOG's history ends before the test period
    assert set(pl.read_parquet(logged)["ticker"]) == {"IXIC", "SPX"}
    assert run.data.params["data.tickers_resolved"] == "GOOG,IXIC,SPX"


def test_ddp_shards_see_every_sample_once():
    from forecast.data.windows import EpochBatchSampler

    shards = []
    for rank in range(2):
        s = EpochBatchSampler(101, 8, shuffle=True, seed=3)
        s.rank, s.world = rank, 2
        s.set_epoch(4)
        shards.append([i for b in s for i in b])
    assert len(shards[0]) == len(shards[1]) == 51
    assert set(shards[0]) | set(shards[1]) == set(range(101))
    assert len(set(shards[0]) & set(shards[1])) == 1  # only the one padding sample repeats


def test_init_from_loads_matching_weights_and_freezes(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from conftest import CONF
    from forecast.training.transfer import load_pretrained

    source = _run(tmp_path, "experiment=multi_ticker")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/m.db")
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[*FAST, "modalities=[price,ticker]"])
    model = instantiate(cfg.model, dims=dict(n_features=5, n_tickers=2, window=16))  # other ticker vocab
    pretrained = mlflow.pytorch.load_model(f"runs:/{source}/model")
    message = load_pretrained(model, pretrained, source, ["backbone"])
    assert "encoders.ticker.embed.weight" in message  # shape differs: kept fresh
    for key, value in pretrained.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
