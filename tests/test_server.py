"""`python -m forecast server` for real: PostgreSQL and `mlflow server` started by the test on free
loopback ports, with a data_dir of their own (see data_root). One server serves the module (its start takes tens
of seconds) and is killed, restarted and stopped by the tests in order:
a sweep survives a SIGKILL of the whole server (finished runs intact, in-flight runs finished or
failed, the databases verified by pg_amcheck); the next sweep continues its Optuna study with two
trials at once (joblib); a trial runs as a real submitit job; a start after a killed one stops what
it left; SIGTERM stops both servers cleanly. Every process a test starts is stopped by a finalizer."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import polars as pl
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from conftest import TINY
from forecast.tracking import postgres

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    postgres.binaries() is None, reason="PostgreSQL's initdb and pg_ctl are not installed: apt-get install postgresql")]
ENV = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
FAST = [*TINY, "model/backbone=transformer"]
STUDY = "team"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def data_root():
    """A folder of the test's own for a data_dir. Not under tmp_path: as root PostgreSQL runs as the
    `postgres` user, who must enter it, and pytest makes its tmp root private again (0700) whenever a
    session starts. Removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="forecast-server-"))
    root.chmod(0o711)  # others may enter, not list
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


class Server:
    """`python -m forecast server` in a process group of its own: started, killed, restarted, stopped."""

    def __init__(self, data_dir: Path, *args: str):
        self.data_dir, self.port, self.db_port = data_dir, free_port(), free_port()
        self.args, self.proc, self.starts = args, None, 0

    def start(self, timeout: float = 300) -> str:
        self.starts += 1
        self.out = self.data_dir.parent / f"server-{self.starts}.out"
        cmd = [sys.executable, "-m", "forecast", "server", f"port={self.port}", f"db_port={self.db_port}",
               f"data_dir={self.data_dir}", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=self.out.open("w"), stderr=subprocess.STDOUT, env=ENV,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while "tracking_uri=" not in self.output() and time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.3)
        assert "tracking_uri=" in self.output(), self.output()[-3000:]
        ready = re.search(r"tracking_uri=(\S+) storage=(\S+)", self.output())
        self.uri, self.storage = ready.group(1), ready.group(2)
        return self.output()

    def output(self) -> str:
        return self.out.read_text()

    def state(self) -> dict:
        return json.loads((self.data_dir / "server.json").read_text())

    def stop(self, sig=signal.SIGTERM, timeout: float = 120) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> list[int]:
        """SIGKILL every process of the server: ours, MLflow's group, PostgreSQL and its backends."""
        state, pids = self.state(), []
        postmaster = state["postgres_pid"]
        backends = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == postmaster]
        for pid in [self.proc.pid, postmaster, *backends]:
            _kill(pid)
            pids.append(pid)
        _kill(-state["mlflow_pid"])
        self.proc.wait()
        pids.append(state["mlflow_pid"])
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:  # SIGKILL takes a moment
            time.sleep(0.1)
        return pids

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop()
            except subprocess.TimeoutExpired:
                self.kill()
        cluster = postgres.Cluster(self.data_dir / "postgres", self.db_port, self.data_dir / "logs" / "pg.log")
        if cluster.exists() and cluster.running():  # left by a failed test: never by the server itself
            cluster._run("pg_ctl", "stop", "-D", str(cluster.folder), "-m", "immediate", check=False)


def _ppid(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL) if pid > 0 else os.killpg(-pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and "Z" != (Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0])


@pytest.fixture(scope="module")
def server():
    root = Path(tempfile.mkdtemp(prefix="forecast-server-"))
    root.chmod(0o711)
    srv = Server(root / "data")
    try:
        srv.start()
        yield srv
    finally:
        srv.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("work")


def _train(work: Path, server: Server, *args: str) -> list[str]:
    return [sys.executable, "-m", "forecast", "train", *FAST, f"logger.tracking_uri={server.uri}",
            f"trainer.default_root_dir={work}/ckpt", f"hydra.run.dir={work}/out", *args]


def _sweep(work: Path, server: Server, name: str, *args: str) -> list[str]:
    return _train(work, server, "-m", "hparams_search=optuna", f"hydra.sweeper.storage={server.storage}",
                  f"hydra.sweeper.study_name={STUDY}", "hydra.sweeper.heartbeat_interval=2",
                  f"hydra.sweep.dir={work}/{name}", *args)


def _runs(server: Server) -> list:
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("forecast")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def _children(server: Server, parent: str) -> list:
    return [r for r in _runs(server) if r.data.tags.get("mlflow.parentRunId") == parent]


def _history(server: Server, run) -> dict:
    client = MlflowClient(server.uri)
    return {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics}


def test_a_sweep_survives_a_sigkill_of_the_whole_server(server, work):
    sweep = subprocess.Popen(_sweep(work, server, "s1", "hydra.sweeper.n_trials=3"), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=ENV, start_new_session=True)
    try:
        deadline, finished = time.monotonic() + 600, []
        while time.monotonic() < deadline and sweep.poll() is None:
            runs = [r for r in _runs(server) if "forecast.trial" in r.data.tags]
            finished = [r for r in runs if r.info.status == "FINISHED"]
            if finished and any(r.info.status == "RUNNING" for r in runs):
                break  # one trial done, the next one logging: now
            time.sleep(0.3)
        assert finished and sweep.poll() is None, "the sweep ended before the server could be killed"
        before = {r.info.run_id: _history(server, r) for r in finished}
        in_flight = [r.info.run_id for r in _runs(server)
                     if r.info.status == "RUNNING" and "forecast.trial" in r.data.tags]
        pids = server.kill()
        assert not any(_alive(p) for p in pids)
        restarted = server.start()
        assert "reused cluster" in restarted and "(current)" in restarted  # the schema was not touched
        out, _ = sweep.communicate(timeout=900)
    finally:
        _kill(-sweep.pid)
    assert sweep.returncode == 0, out[-3000:]
    runs = {r.info.run_id: r for r in _runs(server)}
    for run_id, history in before.items():  # every finished run, every metric, every step
        assert _history(server, runs[run_id]) == history
    parent = next(r for r in runs.values() if r.data.tags.get("forecast.role") == "sweep")
    children = _children(server, parent.info.run_id)
    assert len(children) == 3 and parent.info.status in ("FINISHED", "FAILED")
    for run in children:  # the in-flight one finished (its client retried) or is marked failed: never lost
        assert run.info.status in ("FINISHED", "FAILED"), run.info.run_id
        if run.info.status == "FINISHED":
            assert {"test/mse", "val/best_loss"} <= set(run.data.metrics)
    assert set(in_flight) <= {r.info.run_id for r in children}
    study = optuna.load_study(study_name=STUDY, storage=server.storage)
    assert [t.state for t in study.trials if t.state == TrialState.RUNNING] == []
    by_trial = {r.data.tags["forecast.trial"]: r for r in children}
    for t in study.trials:  # each Optuna trial is the MLflow run tagged with its number
        if t.state == TrialState.COMPLETE:
            assert by_trial[str(t.number)].data.metrics["val/best_loss"] == pytest.approx(t.value)
    assert "database system was interrupted" in (server.data_dir / "logs" / "postgresql.log").read_text()
    _amcheck(server)


def _amcheck(server: Server) -> None:
    """PostgreSQL's own corruption check of every table and index (pages carry checksums: initdb -k)."""
    cmd = [str(postgres.binaries() / "pg_amcheck"), "--install-missing", "--heapallindexed",
           "-h", str(server.data_dir / "postgres"), "-p", str(server.db_port), "-U", "postgres",
           "-d", "mlflow", "-d", "optuna"]
    cmd = ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_next_sweep_continues_the_study_two_trials_at_once(server, work):
    p = subprocess.run(_sweep(work, server, "s2", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
                              "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"),
                       capture_output=True, text=True, env=ENV, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert f"study {STUDY}: continuing, 3 trials found" in p.stdout
    parent = next(r for r in _runs(server) if r.data.tags.get("forecast.trial") == "3").data.tags["mlflow.parentRunId"]
    children = _children(server, parent)
    study = optuna.load_study(study_name=STUDY, storage=server.storage)
    assert len(study.trials) == 5 and sorted(r.data.tags["forecast.trial"] for r in children) == ["3", "4"]
    a, b = children
    assert max(a.info.start_time, b.info.start_time) < min(a.info.end_time, b.info.end_time)  # at once
    for run in children:  # no mixed-up run: its params are its own trial's, its metrics its own forecasts'
        trial = study.trials[int(run.data.tags["forecast.trial"])]
        assert float(run.data.params["model.optimizer.lr"]) == pytest.approx(trial.params["model.optimizer.lr"])
        assert run.data.metrics["val/best_loss"] == pytest.approx(trial.value)
        steps = [m.step for m in MlflowClient(server.uri).get_metric_history(run.info.run_id, "val/loss")]
        assert len(steps) == 2 and steps == sorted(set(steps))  # its own two epochs, once each
        frame = pl.read_parquet(MlflowClient(server.uri).download_artifacts(
            run.info.run_id, "predictions/test_predictions.parquet", str(work)))
        mse = ((frame["pred"] - frame["realised"]) ** 2).mean()
        assert mse == pytest.approx(run.data.metrics["test/mse"], rel=1e-5)
    assert list((server.data_dir / "artifacts").rglob("test_predictions.parquet"))  # served by the server


def test_a_trial_runs_as_a_submitit_job(server, work):
    p = subprocess.run(_sweep(work, server, "s3", "hydra.sweeper.n_trials=1", "hydra/launcher=submitit_local",
                              "hydra.launcher.timeout_min=15"), capture_output=True, text=True, env=ENV, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    run = next(r for r in _runs(server) if r.data.tags.get("forecast.trial") == "5")
    assert run.info.status == "FINISHED" and "submitit" in run.data.tags["mlflow.source.name"]  # its own process
    parent = MlflowClient(server.uri).get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["forecast.study"] == STUDY and parent.info.status == "FINISHED"
    assert list((work / "s3" / ".submitit").rglob("*_result.pkl"))


def test_a_start_after_a_killed_one_stops_what_it_left_and_sigterm_stops_both(server):
    runs = len(_runs(server))
    mlflow_pid, postmaster = server.state()["mlflow_pid"], server.state()["postgres_pid"]
    _kill(server.proc.pid)  # only the server command: MLflow follows it (PR_SET_PDEATHSIG), PostgreSQL stays
    server.proc.wait()
    deadline = time.monotonic() + 60
    while _alive(mlflow_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(mlflow_pid) and _alive(postmaster)
    out = server.start()
    assert "left running" in out and "reused cluster" in out and len(_runs(server)) == runs
    assert server.stop(signal.SIGTERM) == 0
    assert server.output().strip().splitlines()[-1].startswith("server=stopped signal=SIGTERM")
    assert not (server.data_dir / "server.json").exists()
    assert "database system is shut down" in (server.data_dir / "logs" / "postgresql.log").read_text()
    for port in (server.port, server.db_port):
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", port))


def test_the_sqlite_backend_serves_and_stops_on_sigint(data_root):
    srv = Server(data_root / "data", "backend=sqlite")
    try:
        srv.start()
        MlflowClient(srv.uri).create_experiment("probe")
        assert srv.stop(signal.SIGINT) == 0
    finally:
        srv.close()
    assert srv.output().strip().splitlines()[-1].startswith("server=stopped signal=SIGINT")
    assert (data_root / "data" / "mlflow.db").exists() and not (data_root / "data" / "postgres").exists()
