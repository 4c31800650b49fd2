"""The predictions table (SQLAlchemy Core): a SQLite file by default, PostgreSQL (or any SQLAlchemy
database) by URL.

One row per (model, version, ticker, asof, horizon), the primary key: `asof` is the as-of session
(the last close whose data was used), `target` the session the forecast is for (`horizon` sessions
later on the ticker's exchange), `forecast` the forecast log return, `direction` its sign,
`quantiles` {"q10": .., "q50": .., "q90": ..} when the model has a quantile head (null otherwise),
`input_hash` a digest of every input the model saw. `realised` and `realised_at` are left null, for monitoring to fill.

Each as-of session is written in one transaction (`write_session`): a reader sees all of its rows or
none, and a process killed at any moment leaves only whole sessions. Writing is idempotent: a row
whose input hash is unchanged is not touched, one whose inputs changed (a vendor revised a bar) is
updated (`updated_at`) and reported as such.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from sqlalchemy import (
    JSON,
    Column,
    Date,
    DateTime,
    Double,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    and_,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError

from forecast.errors import UserError

metadata = MetaData()
predictions = Table(
    "predictions", metadata,
    Column("model", String(200), primary_key=True),  # registered model name ("run" for a bare run)
    Column("version", String(64), primary_key=True),  # registry version (the run id for a bare run)
    Column("ticker", String(64), primary_key=True),
    Column("asof", Date, primary_key=True),
    Column("horizon", Integer, primary_key=True),
    Column("target", Date, nullable=False),
    Column("forecast", Double, nullable=False),
    Column("direction", SmallInteger, nullable=False),
    Column("quantiles", JSON(none_as_null=True), nullable=True),
    Column("input_hash", String(32), nullable=False),
    Column("run_id", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=True),
    Column("realised", Double, nullable=True),
    Column("realised_at", DateTime(timezone=True), nullable=True),
    Index("ix_predictions_session", "model", "version", "horizon", "asof"),
)
KEY = ("model", "version", "ticker", "asof", "horizon")
CHANGED = ("target", "forecast", "direction", "quantiles", "input_hash", "run_id")  # what an update rewrites


@dataclass
class Written:
    inserted: int = 0
    updated: list[tuple[str, dt.date]] | None = None  # (ticker, asof) of rows whose inputs changed
    unchanged: int = 0


def shown(url: str) -> str:
    """The URL as printed: without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # not a URL at all
        return re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", url)


def connect(url: str) -> Engine:
    """An engine for `url` with the table created; a one-line UserError when it cannot be reached."""
    try:
        engine = create_engine(url, **_options(url))
        event.listen(engine, "connect", _sqlite_wal)
        with engine.connect() as c:
            c.execute(text("SELECT 1"))
        metadata.create_all(engine)
    except (SQLAlchemyError, ImportError, ValueError) as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise UserError(f"predictions.url: cannot use {shown(url)}: {reason}") from None
    return engine


def _options(url: str) -> dict:
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        return dict(connect_args={"timeout": 60})  # wait for another writer's transaction
    if u.get_backend_name() == "postgresql":
        return dict(connect_args={"connect_timeout": 10}, pool_pre_ping=True)
    return {}


def _sqlite_wal(dbapi_connection, record) -> None:
    """SQLite: a write-ahead log, so readers read the committed sessions while one is written, and
    synchronous=NORMAL: a commit survives a killed process (and stays atomic always), while a power cut
    may lose the last sessions written, which the next catch-up writes again; no fsync per session."""
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cur = dbapi_connection.cursor()
        if cur.execute("PRAGMA database_list").fetchone()[2]:  # a file, not :memory:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()


def _session_filter(model: str, version: str, horizon: int):
    c = predictions.c
    return (c.model == model) & (c.version == version) & (c.horizon == horizon)


def last_asof(engine: Engine, model: str, version: str, horizon: int) -> dt.date | None:
    """The latest as-of session stored for this model version and horizon (None: none yet)."""
    with engine.connect() as c:
        return c.execute(select(func.max(predictions.c.asof)).where(_session_filter(model, version, horizon))).scalar()


def stored_asofs(engine: Engine, model: str, version: str, horizon: int, first: dt.date, last: dt.date) -> set:
    """The as-of sessions from `first` to `last` that have rows for this model version and horizon."""
    c = predictions.c
    query = select(c.asof).distinct().where(_session_filter(model, version, horizon), c.asof.between(first, last))
    with engine.connect() as conn:
        return set(conn.execute(query).scalars())


def write_session(engine: Engine, rows: list[dict], tries: int = 3) -> Written:
    """Write the rows of one as-of session (all with the same model, version, asof and horizon) in
    one transaction: insert the new ones, update those whose input hash changed, leave the rest."""
    if not rows:
        return Written(updated=[])
    for _ in range(tries - 1):
        try:
            with engine.begin() as conn:
                return _write(conn, rows)
        except IntegrityError:  # another process inserted some of these rows first: read them again
            continue
    with engine.begin() as conn:  # the last try: its error is the caller's
        return _write(conn, rows)


def _write(conn, rows: list[dict]) -> Written:
    """Inside the caller's transaction: read the session's stored hashes, insert and update."""
    c, r0 = predictions.c, rows[0]
    key = (c.model == r0["model"]) & (c.version == r0["version"]) & (c.asof == r0["asof"]) & \
        (c.horizon == r0["horizon"]) & c.ticker.in_([r["ticker"] for r in rows])
    held = {t: h for t, h in conn.execute(select(c.ticker, c.input_hash).where(key))}
    now = dt.datetime.now(dt.timezone.utc)
    new = [dict(r, created_at=now) for r in rows if r["ticker"] not in held]
    changed = [r for r in rows if r["ticker"] in held and held[r["ticker"]] != r["input_hash"]]
    if new:
        conn.execute(predictions.insert(), new)
    for r in changed:
        where = and_(*[c[k] == r[k] for k in KEY])
        conn.execute(predictions.update().where(where).values(**{k: r[k] for k in CHANGED}, updated_at=now))
    return Written(len(new), [(r["ticker"], r["asof"]) for r in changed], len(rows) - len(new) - len(changed))
