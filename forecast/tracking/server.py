"""`python -m forecast server`: the team's MLflow tracking server, on a real PostgreSQL.

Starts PostgreSQL (forecast/tracking/postgres.py: a cluster in `data_dir/postgres`, created on first
use and reused after), migrates MLflow's schema explicitly (`mlflow db upgrade`, so a new MLflow never
migrates a team's database silently at start), then runs `mlflow server` with served artifacts
(`data_dir/artifacts`) on 127.0.0.1. It prints the tracking URI and the Optuna storage URL, and stays
in the foreground: SIGINT or SIGTERM stops MLflow (its requests finish), then PostgreSQL (a fast
shutdown: everything committed is on disk). `backend=sqlite` keeps both stores in SQLite files.

What a start leaves behind is always stoppable: `data_dir/server.json` names the running processes;
MLflow dies with this process (PR_SET_PDEATHSIG); a PostgreSQL or MLflow left running by a killed
start is stopped by the next one before it starts its own.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from omegaconf import DictConfig

from forecast.errors import ConfigError, UserError
from forecast.tracking import postgres
from forecast.tracking.postgres import Cluster

LOOPBACK = ("127.0.0.1", "localhost", "::1")
STATE = "server.json"


class Stop(Exception):
    """SIGINT or SIGTERM arrived."""


def _stop(signum, _frame):
    raise Stop(signal.Signals(signum).name)


def serve(cfg: DictConfig) -> int:
    data = Path(cfg.data_dir).resolve()
    (data / "logs").mkdir(parents=True, exist_ok=True)
    stack, reason = contextlib.ExitStack(), "error"
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _stop)
    try:
        _stop_leftover(data)
        store, storage, cluster = _start_store(cfg, data, stack)
        _upgrade(store)
        proc = _start_mlflow(cfg, data, store, stack)
        local = f"http://{'127.0.0.1' if cfg.host in ('0.0.0.0', '::') else cfg.host}:{cfg.port}"
        _wait_healthy(local, proc, cfg.startup_timeout, data / "logs" / "mlflow.log")
        uri = f"http://{socket.getfqdn()}:{cfg.port}" if cfg.host in ("0.0.0.0", "::") else local
        state = dict(tracking_uri=uri, storage=storage, backend_store_uri=store, mlflow_pid=proc.pid,
                     postgres_pid=cluster.pid() if cluster else None, started=time.time())
        (data / STATE).write_text(json.dumps(state, indent=1))
        stack.callback((data / STATE).unlink, missing_ok=True)
        _announce(cfg, data, uri, storage)
        _watch(proc, cluster, data)
    except Stop as s:
        reason = str(s)
    finally:
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        stack.close()
    print(f"server=stopped signal={reason} data_dir={data}", flush=True)
    return 0


def _start_store(cfg: DictConfig, data: Path, stack: contextlib.ExitStack):
    """(MLflow backend store URI, Optuna storage URL, the cluster or None for SQLite)."""
    if cfg.backend == "sqlite":
        return f"sqlite:///{data / 'mlflow.db'}", f"sqlite:///{data / 'optuna.db'}", None
    cluster = Cluster(data / "postgres", db_port(cfg), data / "logs" / "postgresql.log")
    fresh = not cluster.exists()
    if fresh:
        cluster.init()
    elif cluster.running():
        print(f"PostgreSQL left running in {cluster.folder} by an earlier start: stopping it first", flush=True)
        cluster.stop()
    stack.callback(cluster.stop)  # registered before the start, so a signal during it still stops it
    cluster.start(cfg.startup_timeout)
    cluster.ensure_databases()
    print(f"PostgreSQL {cluster.version()} on 127.0.0.1:{cluster.port}, {'new' if fresh else 'reused'} "
          f"cluster in {cluster.folder}", flush=True)
    return cluster.url("mlflow"), cluster.url("optuna"), cluster


def db_port(cfg) -> int:
    return cfg["db_port"] or cfg["port"] + 1


def _env() -> dict:
    # The server's job runner executes GenAI scorer jobs (LLM judges): eight more processes this
    # project never uses.
    return dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")


def _schema(store: str) -> str | None:
    """MLflow's alembic revision in the store, None when it has no tables yet."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(store)
    try:
        with engine.connect() as conn:
            return conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar()
    except sqlalchemy.exc.DBAPIError:
        return None
    finally:
        engine.dispose()


def _upgrade(store: str) -> None:
    before = _schema(store)
    p = subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", store], capture_output=True, text=True,
                       env=_env())
    if p.returncode != 0:
        raise UserError(f"mlflow db upgrade {store} failed: {p.stderr.strip().splitlines()[-1:]}")
    after = _schema(store)
    how = "created" if before is None else "current" if before == after else f"upgraded from {before}"
    print(f"MLflow schema {after} ({how})", flush=True)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when this process dies, even by SIGKILL (Linux)."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _start_mlflow(cfg: DictConfig, data: Path, store: str, stack: contextlib.ExitStack) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--serve-artifacts",
           "--artifacts-destination", str(data / "artifacts"), "--host", cfg.host, "--port", str(cfg.port),
           "--workers", str(cfg.workers)]
    if cfg.allowed_hosts:
        cmd += ["--allowed-hosts", ",".join(cfg.allowed_hosts)]
    with open(data / "logs" / "mlflow.log", "ab") as log:
        # A session of its own: a Ctrl-C reaches this process only, which stops MLflow before PostgreSQL.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=_env(),
                                start_new_session=True, preexec_fn=_die_with_parent)
    stack.callback(_stop_group, proc.pid, proc)
    return proc


def _stop_group(pgid: int, proc: subprocess.Popen | None = None, grace: float = 30) -> None:
    """SIGTERM to MLflow's CLI (it forwards it to uvicorn, which finishes its requests), then SIGKILL
    to whatever of its process group is left."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and (proc.poll() is None if proc else _alive(pgid)):
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    if proc:
        proc.wait()


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_leftover(data: Path) -> None:
    """An MLflow still running from a start that was killed (its server.json is still there)."""
    try:
        pid = json.loads((data / STATE).read_text())["mlflow_pid"]
        leftover = b"mlflow" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, KeyError):
        return
    if leftover:
        print(f"MLflow left running by an earlier start (pid {pid}): stopping it first", flush=True)
        _stop_group(pid)


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"mlflow server exited with code {proc.returncode} before it answered; see {log}")
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise UserError(f"startup_timeout: mlflow server did not answer {url}/health within {timeout:g} s; see {log}")


def _announce(cfg: DictConfig, data: Path, uri: str, storage: str) -> None:
    if cfg.host not in LOOPBACK:
        print(f"warning: MLflow listens on {cfg.host}:{cfg.port} without authentication: whoever reaches this "
              "port can read, change and delete every run and model (put an authenticating proxy in front, "
              "or MLflow's basic-auth app)", file=sys.stderr, flush=True)
    print(f"MLflow UI and API: {uri}  (artifacts in {data / 'artifacts'}, logs in {data / 'logs'})\n"
          f"runs:   python -m forecast train logger=server logger.tracking_uri={uri}\n"
          f"sweeps: python -m forecast train -m hparams_search=optuna logger=server logger.tracking_uri={uri} "
          f"hydra.sweeper.storage={storage}\n"
          f"tracking_uri={uri} storage={storage} data_dir={data}", flush=True)


def _watch(proc: subprocess.Popen, cluster: Cluster | None, data: Path) -> None:
    """Until a signal: both must stay up; either one stopping on its own ends the server."""
    while True:
        if proc.poll() is not None:
            raise UserError(f"mlflow server exited with code {proc.returncode}; see {data / 'logs' / 'mlflow.log'}")
        if cluster is not None and not cluster.running():
            raise UserError(f"PostgreSQL stopped; see {cluster.log}")
        time.sleep(1)


# --- checks before anything starts (forecast.config.commands.Server.cross_check) ----------------------

def port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check(plain: dict) -> None:
    """What lies outside the config: the ports, PostgreSQL's programs, a data_dir PostgreSQL can use."""
    data = Path(plain["data_dir"]).resolve()
    if data.exists() and not data.is_dir():
        raise ConfigError("data_dir", f"{data} is not a folder")
    if not port_free(plain["host"], plain["port"]):
        raise ConfigError("port", f"{plain['host']}:{plain['port']} is in use (a server already?); choose port=")
    if plain["backend"] == "postgresql":
        _check_postgres(plain, data)


def _check_postgres(plain: dict, data: Path) -> None:
    if postgres.binaries() is None:
        raise ConfigError("backend", "PostgreSQL is not installed (no initdb and pg_ctl on PATH or in "
                                     "/usr/lib/postgresql/*/bin): apt-get install postgresql, or backend=sqlite")
    cluster = Cluster(data / "postgres", db_port(plain), data / "logs" / "postgresql.log")
    if cluster.folder.is_dir() and not cluster.exists() and any(cluster.folder.iterdir()):
        raise ConfigError("data_dir", f"{cluster.folder} is not empty and holds no PostgreSQL cluster")
    if len(str(cluster.socket).encode()) > postgres.SOCKET_MAX:
        raise ConfigError("data_dir", f"{data} is too long for PostgreSQL's socket path "
                                      f"({postgres.SOCKET_MAX} bytes with {cluster.socket.name}); choose a shorter one")
    if not cluster.running() and not port_free("127.0.0.1", cluster.port):
        raise ConfigError("db_port", f"127.0.0.1:{cluster.port} (PostgreSQL's port) is in use; choose db_port=")
    if postgres.as_root():
        if not postgres.postgres_user_exists():
            raise ConfigError("backend", "as root, PostgreSQL runs as the `postgres` user, and there is none "
                                         "(Debian's postgresql package creates it)")
        blocked = postgres.blocked_for_postgres(data)
        if blocked is not None:
            raise ConfigError("data_dir", f"as root, PostgreSQL runs as the `postgres` user, who cannot enter "
                                          f"{blocked}: chmod o+x {blocked}, or choose a data_dir it can reach")
