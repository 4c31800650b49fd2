"""The `alerts` table of the predictions database: one row per (model, version, session, kind,
feature), written once (a second monitor run over the same data finds every row there and writes
nothing), so alerts are idempotent like predictions.

kind: `performance` (feature `rank_ic`: the Page-Hinkley statistic against its threshold), `input`
(feature `<modality>:<name>`: the PSI against its threshold; `detail` holds the KS p-value), `retrain`
(feature `promoted` or `kept`: the challenger's IC against the champion's on the same sessions;
`detail` holds the challenger's run id). `session` is the session at whose close the alert was known.
"""
from __future__ import annotations

import datetime as dt

from sqlalchemy import Column, Date, DateTime, Double, String, Table, select
from sqlalchemy.engine import Engine

from forecast.inference.predictions import metadata

alerts = Table(
    "alerts", metadata,
    Column("model", String(200), primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("session", Date, primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("feature", String(200), primary_key=True),
    Column("statistic", Double, nullable=False),
    Column("threshold", Double, nullable=False),
    Column("detail", String(200), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
KEY = ("model", "version", "session", "kind", "feature")


def create(engine: Engine) -> None:
    alerts.create(engine, checkfirst=True)


def write(engine: Engine, rows: list[dict]) -> int:
    """Insert the rows not stored yet, in one transaction; returns how many were new."""
    if not rows:
        return 0
    c = alerts.c
    now = dt.datetime.now(dt.timezone.utc)
    with engine.begin() as conn:
        held = {tuple(r) for r in conn.execute(select(*[c[k] for k in KEY]).where(
            c.model == rows[0]["model"], c.version == rows[0]["version"]))}
        new = [dict(r, created_at=now) for r in rows if tuple(r[k] for k in KEY) not in held]
        if new:
            conn.execute(alerts.insert(), new)
    return len(new)


def read(engine: Engine, model: str, version: str, last: dt.date | None = None) -> list[dict]:
    """This version's alerts up to `last`, by session then kind and feature."""
    c = alerts.c
    query = select(alerts).where(c.model == model, c.version == version)
    if last is not None:
        query = query.where(c.session <= last)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query.order_by(c.session, c.kind, c.feature))]


def line(a: dict) -> str:
    detail = f" {a['detail']}" if a.get("detail") else ""
    return (f"alert {a['session']} {a['kind']:<11} {a['feature']:<22} statistic={a['statistic']:.4g} "
            f"threshold={a['threshold']:.4g}{detail}")
