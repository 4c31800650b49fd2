"""A PostgreSQL cluster in a folder of its own, run with the distribution's binaries (`initdb`,
`pg_ctl`): the backend store of `python -m forecast server` and the home of the Optuna studies.

Created on first use (`initdb`, data checksums on), started and stopped with `pg_ctl`, reused as it
is on every later start. `initdb` refuses to run as root, so as root every PostgreSQL program runs
as the `postgres` user (`runuser -u postgres --`) and the cluster folder belongs to it.

Who can connect: PostgreSQL listens on 127.0.0.1 only; over TCP only the `forecast` role, which owns
the `mlflow` and `optuna` databases and is not a superuser (a superuser can run shell commands
through `COPY ... PROGRAM`). The Unix socket, the one way in for the superuser, lives inside the
cluster folder (mode 0700), so only its owner (and root) reach it.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

ROLE = "forecast"
DATABASES = ("mlflow", "optuna")
SOCKET_MAX = 107  # bytes of a Unix socket path (sun_path), PostgreSQL's own limit
HBA = f"""# Written by `python -m forecast server` (forecast/tracking/postgres.py).
# The Unix socket is in this folder (mode 0700): only its owner and root reach it.
local   all   all                 trust
# Over TCP: 127.0.0.1 only, and only the {ROLE} role (not a superuser).
host    all   {ROLE}   127.0.0.1/32   trust
"""


def binaries() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, else the newest of Debian's
    /usr/lib/postgresql/<major>/bin (Debian keeps them off PATH); None when not installed."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent  # a link on PATH: the folder of the real programs
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb") if (p.parent / "pg_ctl").exists()]
    return max(found, key=lambda b: int(b.parent.name) if b.parent.name.isdigit() else 0, default=None)


def as_root() -> bool:
    return os.geteuid() == 0


def postgres_user_exists() -> bool:
    try:
        pwd.getpwnam("postgres")
        return True
    except KeyError:
        return False


def blocked_for_postgres(folder: Path) -> Path | None:
    """As root: the first existing folder on the way to `folder` that the `postgres` user cannot
    enter, or None when it can reach it."""
    path = folder.resolve()
    existing = next(p for p in [path, *path.parents] if p.exists())
    for p in [*reversed(existing.parents), existing]:
        if subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(p)]).returncode != 0:
            return p
    return None


def _state(pid: int | None) -> str | None:
    """The state letter (R, S, Z, ...) of a postgres process `pid`, None when there is none."""
    try:
        name, _, rest = Path(f"/proc/{pid}/stat").read_text().partition(" (")[2].rpartition(")")
    except OSError:
        return None
    return rest.split()[0] if name == "postgres" and rest.split() else None


class Cluster:
    """The cluster in `folder`, served on 127.0.0.1:`port`."""

    def __init__(self, folder: Path, port: int, log: Path):
        self.folder, self.port, self.log = folder, port, log
        self.bin = binaries()

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / program), *args]
        cmd = ["runuser", "-u", "postgres", "--", *cmd] if as_root() else cmd
        p = subprocess.run(cmd, capture_output=True, text=True)
        if check and p.returncode != 0:
            raise RuntimeError(f"{program} failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-2000:]}")
        return p

    @property
    def socket(self) -> Path:
        return self.folder / f".s.PGSQL.{self.port}"

    def exists(self) -> bool:
        return (self.folder / "PG_VERSION").exists()

    def version(self) -> str:
        return (self.folder / "PG_VERSION").read_text().strip()

    def init(self) -> None:
        """initdb into an empty `folder` owned by the user PostgreSQL runs as; our pg_hba.conf."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if as_root():
            shutil.chown(self.folder, "postgres", "postgres")
        self.folder.chmod(0o700)
        self._run("initdb", "-D", str(self.folder), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--data-checksums", "--no-instructions")
        (self.folder / "pg_hba.conf").write_text(HBA)

    def running(self) -> bool:
        """A live postmaster serves this folder: the process of postmaster.pid, a postgres, not a zombie
        (pg_ctl status counts a killed postmaster not yet reaped as running)."""
        state = _state(self.pid())
        return state is not None and state != "Z"

    def _wait_reaped(self, timeout: float) -> None:
        """A killed postmaster's zombie still holds postmaster.pid for PostgreSQL's lock check: wait for it."""
        deadline = time.monotonic() + timeout
        while _state(self.pid()) == "Z" and time.monotonic() < deadline:
            time.sleep(0.2)

    def pid(self) -> int | None:
        try:
            return int((self.folder / "postmaster.pid").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            return None

    def start(self, timeout: float) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log.touch()
        if as_root():
            shutil.chown(self.log, "postgres", "postgres")  # pg_ctl opens it as that user
        self._wait_reaped(timeout)
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{self.folder}'"
        self._run("pg_ctl", "start", "-D", str(self.folder), "-l", str(self.log), "-w", "-t", str(int(timeout)),
                  "-o", options)

    def stop(self) -> None:
        """A fast shutdown: open transactions roll back, everything committed is on disk."""
        if self.running():
            self._run("pg_ctl", "stop", "-D", str(self.folder), "-m", "fast", "-w", "-t", "60")

    def ensure_databases(self) -> None:
        """The `forecast` role and its databases, created when missing (so a reused cluster is kept)."""
        import psycopg

        with psycopg.connect(host=str(self.folder), port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone():
                conn.execute(f'CREATE ROLE "{ROLE}" LOGIN')
            for db in DATABASES:
                if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
                    conn.execute(f'CREATE DATABASE "{db}" OWNER "{ROLE}"')

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of a database, as the `forecast` role (psycopg 3: SQLAlchemy 2.1's default)."""
        return f"postgresql+psycopg://{ROLE}@127.0.0.1:{self.port}/{database}"
