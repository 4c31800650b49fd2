"""`python -m forecast predict model=<ref> [date=YYYY-MM-DD|today] [catch_up=true] [since=YYYY-MM-DD]`:
the forecasts made at the close of an as-of session for the session(s) `horizon` later, written to the
predictions table.

Everything is checked before any work is done (the model reference and its stored state, the store,
its tickers and modalities, the database, the date): a user error is one line and nothing is
written. Each as-of session is then one transaction (predictions.py). With catch_up=true the as-of
sessions are every session after the last one stored for this model version up to `date` (on an
empty table from `since`, default the first session after the model's validation period; with
`since` given, every session from it not stored yet), so a missed day is made up by the next run,
exactly once. The model runs through THE forecast path, forecast.training.fit.forecast, and its
forecasts are calibrated as train fitted it on validation (forecast/evaluation/calibration.py).
"""
from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from sqlalchemy.engine import Engine

from forecast.errors import ConfigError, UserError
from forecast.evaluation.calibration import Calibration, anchor_volatility
from forecast.inference import features, predictions, sessions

CHUNK = 4096  # samples gathered and forecast at once; sessions are still written one by one


@dataclass
class Job:
    """What one predict run does, fully checked."""
    name: str  # registered model ("run" for a bare run)
    version: str  # registry version (the run id for a bare run)
    run_id: str
    state: dict  # MarketData.predict_state() of the training run
    store: str
    tickers: list[str]  # the model's tickers the store has
    exchange: dict[str, str]  # ticker -> exchange code (the store's manifest)
    url: str
    missing: list[str] = field(default_factory=list)  # the model's tickers the store lacks
    engine: Engine | None = None
    days: list[dt.date] = field(default_factory=list)  # as-of sessions to forecast, ascending
    alert_days: set = field(default_factory=set)  # a routed model: sessions its full model serves every request


@dataclass
class Totals:
    written: int = 0
    updated: list = field(default_factory=list)
    stale: dict = field(default_factory=dict)  # ticker -> its last bar (None: no bar at all)
    short: set = field(default_factory=set)  # tickers with fewer bars than the window
    shown: list = field(default_factory=list)  # rows of the last session with forecasts
    sessions: int = 0


class Clock:
    """Seconds per phase, for `bench predict` (`perf_file=`)."""

    def __init__(self):
        self.start = self.last = time.time()
        self.phases: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.time()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self.last
        self.last = now


def predict(cfg) -> int:
    clock = Clock()
    job, asof = plan(cfg)
    clock.lap("plan")
    if not job.days and not cfg.catch_up:
        print(f"{asof} is not a session of {', '.join(sorted(set(job.exchange.values())))}: nothing to predict")
        return 0
    from forecast.tracking import runs

    model = runs.load_model(job.run_id)
    job.alert_days = alert_days(job, model)
    clock.lap("load")
    totals = run(job, model, int(cfg.batch_size), clock) if job.days else Totals()
    print(report(job, totals, int(cfg.show)))
    if cfg.get("perf_file"):
        Path(cfg.perf_file).write_text(json.dumps(dict(started=clock.start, phases=clock.phases,
                                                       tickers=len(job.tickers), sessions=totals.sessions)))
    return 0


def plan(cfg) -> tuple[Job, dt.date | None]:
    """Check every reference, then choose the as-of sessions; nothing is written but the empty table."""
    from forecast.tracking import runs

    day = None if str(cfg.date) == "today" else parse_date(cfg.date, "date")
    since = parse_date(cfg.since, "since") if cfg.get("since") else None
    name, version, run_id = runs.resolve_model(cfg.logger.tracking_uri, str(cfg.model_ref))
    state = runs.load_predict_state(run_id)
    store = str(cfg.data.store or state["store"])
    tickers, exchange = store_tickers(store, state)
    features.check_store(store, state)
    job = Job(name, version, run_id, state, store, tickers, exchange, str(cfg.predictions.url),
              sorted(set(state["tickers"]) - set(tickers)))
    job.engine = predictions.connect(job.url)
    codes = sorted(set(exchange.values()))
    day = day or max(sessions.latest_closed(c, dt.datetime.now(dt.timezone.utc)) for c in codes)
    if not cfg.catch_up:
        job.days = [day] if any(sessions.is_session(c, day) for c in codes) else []
        return job, day
    horizon = state["horizon"]
    last = predictions.last_asof(job.engine, name, version, horizon)
    first = since or (last + dt.timedelta(days=1) if last else dt.date.fromisoformat(state["test_start"]))
    done = predictions.stored_asofs(job.engine, name, version, horizon, first, day) if since else set()
    job.days = sorted({d for c in codes for d in sessions.sessions(c, first, day)} - done)
    return job, day


def alert_days(job: Job, model) -> set[dt.date]:
    """A routed model's (forecast/compress/route.py) as-of sessions under an active drift alert: the
    `router.alert_sessions` sessions from each `performance` or `input` alert that monitor wrote for
    this model or for the full model it was cut from. There the full model serves every request."""
    from forecast.monitoring import alerts
    from forecast.tracking import runs

    if not hasattr(model, "router") or not job.days:
        return set()
    alerts.create(job.engine)
    code, n = sorted(set(job.exchange.values()))[0], int(getattr(model.router, "alert_sessions", 20))
    held = [a for name, version in dict.fromkeys(runs.served_as(job.run_id) + [(job.name, job.version)])
            for a in alerts.read(job.engine, name, version, job.days[-1]) if a["kind"] in ("performance", "input")]
    return {d for a in held for d in sessions.sessions(code, a["session"], job.days[-1])[:n]} & set(job.days)


def parse_date(value, key: str) -> dt.date:
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(key, f"must be a date YYYY-MM-DD{' or today' if key == 'date' else ''}, "
                               f"got {value!r}") from None


def store_tickers(store: str, state: dict) -> tuple[list[str], dict[str, str]]:
    """The model's tickers that the store has, and their exchanges; none of them is an error."""
    from data_pipelines.store import read_manifest

    if not (Path(store) / "manifest.parquet").exists():
        raise UserError(f"data.store: no store at {store} (build one with `python -m forecast ingest`)")
    manifest = read_manifest(store)
    exchange = dict(manifest.select("ticker", "exchange").iter_rows())
    have = [t for t in state["tickers"] if t in exchange]
    if not have:
        raise UserError(f"data.store: {store} has none of the model's tickers {state['tickers']}")
    return have, {t: exchange[t] for t in have}


def run(job: Job, model, batch_size: int, clock: Clock) -> Totals:
    """Forecast every as-of session of the job, writing each one in its own transaction."""
    frame = features.read_frame(job.store, job.state, job.tickers, job.days[0], job.days[-1])
    inputs = features.inputs(frame, job.state, job.store) if frame.height else {}
    frame = frame.with_row_index("row")
    calibration = Calibration.from_state(job.state.get("calibration"))
    misses = served_misses(job, calibration)  # None unless the quantiles adapt (evaluation/adaptive.py)
    outcome = outcomes(frame, job.state["horizon"]) if misses else None  # (N,) NaN past the store's last bar
    clock.lap("read")
    totals = Totals()
    last_bar = dict(frame.group_by("ticker").agg(pl.col("date").max()).iter_rows())
    for chunk in chunks(frame, job, totals, last_bar):
        rows = pl.concat([a for _, a in chunk])["row"].to_numpy()
        out = Forecasts()
        if len(rows):
            if hasattr(model, "router"):  # a routed model: the full model alone under a drift alert
                model.router.force = chunk[0][0] in job.alert_days
            ds = features.dataset(inputs, frame, rows, job.state["window"])
            sigma = anchor_volatility(frame["ret"].to_numpy(), rows, job.state["window"], job.state["horizon"]) \
                if calibration.needs_volatility else None  # (n,)
            out = calibrated(run_model(model, ds, batch_size, job.state["target_std"]), calibration, sigma)
        clock.lap("model")
        offset = 0
        for day, anchors in chunk:
            part = out.slice(offset, anchors.height)
            if misses is not None and part.quantiles is not None:  # by what was served before `day`
                tickers = anchors["ticker"].to_list()
                part.quantiles = misses.widen(day, tickers, part.quantiles)
                misses.add(day, tickers, part.quantiles, outcome[anchors["row"].to_numpy()])
            rows = session_rows(job, day, anchors, part)
            offset += anchors.height
            written = predictions.write_session(job.engine, rows)
            totals.written += written.inserted + len(written.updated)
            totals.updated += written.updated
            totals.sessions += bool(rows)  # sessions with forecasts (new, updated or unchanged)
            totals.shown = rows or totals.shown
        clock.lap("write")
    return totals


def served_misses(job: Job, calibration: Calibration):
    """The served quantiles of this version up to the last as-of session, when they adapt; else None."""
    if not calibration.adaptive or not calibration.taus:
        return None
    from forecast.inference.served_misses import ServedMisses

    return ServedMisses(job.engine, job.name, job.version, job.state["horizon"], calibration.taus,
                        calibration.adaptive, job.store, job.days[-1] + dt.timedelta(days=1))


def outcomes(frame: pl.DataFrame, horizon: int) -> np.ndarray:
    """(N,) each row's forward log return over `horizon` bars of its ticker, as train's target; NaN
    where that bar is past the frame (after the last as-of session: not known yet)."""
    y = (pl.col("close").shift(-horizon).over("ticker") / pl.col("close")).log()
    return frame.select(y.alias("y"))["y"].fill_null(np.nan).to_numpy()


def chunks(frame: pl.DataFrame, job: Job, totals: Totals, last_bar: dict):
    """Lists of (as-of session, its anchor rows), about CHUNK samples each; stale and short tickers
    are recorded in `totals` on the way."""
    window = job.state["window"]
    by_day = {d: g for (d,), g in frame.filter(pl.col("date").is_in(job.days)).group_by("date")}
    open_on = {c: set(sessions.sessions(c, job.days[0], job.days[-1])) for c in set(job.exchange.values())}
    chunk, size = [], 0
    for day in job.days:
        expected = {t for t in job.tickers if day in open_on[job.exchange[t]]}
        have = by_day.get(day, frame.clear()).filter(pl.col("ticker").is_in(list(expected)))
        totals.stale.update({t: last_bar.get(t) for t in expected - set(have["ticker"])})
        totals.short.update(have.filter(pl.col("pos") < window)["ticker"])
        anchors = have.filter(pl.col("pos") >= window).select("row", "ticker").sort("ticker")
        if chunk and (day in job.alert_days) != (chunk[-1][0] in job.alert_days):  # one alert state a chunk
            yield chunk
            chunk, size = [], 0
        chunk.append((day, anchors))
        size += anchors.height
        if size >= CHUNK:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


@dataclass
class Forecasts:
    """The model's output for n windows, in log-return units, and the digests of their inputs."""
    point: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (n,)
    quantiles: np.ndarray | None = None  # (n, Q) from a quantile head, levels `taus`
    taus: list[float] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)

    def slice(self, start: int, n: int) -> Forecasts:
        q = None if self.quantiles is None else self.quantiles[start:start + n]
        return Forecasts(self.point[start:start + n], q, self.taus, self.hashes[start:start + n])


def run_model(model, ds, batch_size: int, scale: float) -> Forecasts:
    """The forecasts of every window of `ds`, in order, through THE forecast path (fit.forecast);
    `scale` (the training target's std) turns the model's units into log returns."""
    from forecast.data.windows import EpochBatchSampler
    from forecast.model.forecaster import NOT_INPUTS
    from forecast.training.fit import forecast

    hashes: list[str] = []

    def batches():  # the batches the model sees, each hashed on the way
        for idx in EpochBatchSampler(len(ds), batch_size, shuffle=False, shard=False):
            batch = ds[idx]
            hashes.extend(features.input_hashes(batch, sorted(k for k in batch if k not in NOT_INPUTS)))
            yield batch

    raw = forecast(model, batches())  # (n,), or (n, Q) from a quantile head
    if raw.dim() == 1:
        return Forecasts(raw.double().numpy() * scale, hashes=hashes)
    point = model.head.point(raw).double().numpy() * scale  # (n,) the median
    return Forecasts(point, raw.double().numpy() * scale, list(model.head.taus), hashes)


def calibrated(out: Forecasts, calibration: Calibration, sigma: np.ndarray | None) -> Forecasts:
    """`out` calibrated as train fitted it on validation (the identity for a model stored without one);
    `sigma` (n,) each window's EWMA volatility, for quantiles set from volatility (else None)."""
    q = None if out.quantiles is None else calibration.quantile(out.quantiles, sigma)
    return Forecasts(calibration.point(out.point), q, out.taus, out.hashes)


def session_rows(job: Job, day: dt.date, anchors: pl.DataFrame, out: Forecasts) -> list[dict]:
    """The table rows of one as-of session."""
    horizon = job.state["horizon"]
    targets = {c: sessions.after(c, day, horizon) for c in set(job.exchange[t] for t in anchors["ticker"])}
    quantiles = [None] * len(out.point) if out.quantiles is None else \
        [{f"q{round(t * 100)}": float(v) for t, v in zip(out.taus, q)} for q in out.quantiles]  # {"q10": ..}
    return [dict(model=job.name, version=job.version, ticker=t, asof=day, horizon=horizon,
                 target=targets[job.exchange[t]], forecast=float(f), direction=int(np.sign(f)), quantiles=q,
                 input_hash=h, run_id=job.run_id)
            for t, f, q, h in zip(anchors["ticker"].to_list(), out.point, quantiles, out.hashes)]


def report(job: Job, totals: Totals, show: int) -> str:
    """The last session's forecasts as a short table, what was not forecast, and the summary line."""
    lines = [f"{'ticker':<12}{'asof':<12}{'target':<12}{'forecast':>11}  direction"] if totals.shown else []
    for r in totals.shown[:show]:
        arrow = {1: "up", -1: "down", 0: "flat"}[r["direction"]]
        lines.append(f"{r['ticker']:<12}{r['asof']!s:<12}{r['target']!s:<12}{r['forecast']:>+11.6f}  {arrow}")
    if len(totals.shown) > show:
        lines.append(f"... {len(totals.shown) - show} more tickers")
    if totals.sessions > 1 and totals.shown:
        lines.append(f"(the last of {totals.sessions} as-of sessions)")
    if totals.stale:
        listed = [f"{t} (last bar {d or 'none'})" for t, d in sorted(totals.stale.items())]
        lines.append(f"stale, not forecast (no bar for the as-of session): {', '.join(listed[:20])}"
                     + (f" and {len(listed) - 20} more" if len(listed) > 20 else ""))
    if job.missing:
        lines.append(f"not in the store, not forecast: {', '.join(job.missing[:20])}"
                     + (f" and {len(job.missing) - 20} more" if len(job.missing) > 20 else ""))
    if totals.short:
        lines.append(f"not forecast (fewer bars than the window): {', '.join(sorted(totals.short)[:20])}")
    if job.alert_days:
        lines.append(f"drift alert: the full model served every request on {len(job.alert_days)} of "
                     f"{len(job.days)} sessions (from {min(job.alert_days)})")
    if totals.updated:
        shown = ", ".join(f"{t} {d}" for t, d in totals.updated[:10])
        lines.append(f"updated {len(totals.updated)} rows whose inputs changed: {shown}"
                     + (" ..." if len(totals.updated) > 10 else ""))
    lines.append(f"predictions={totals.written} sessions={totals.sessions} stale={len(totals.stale)} "
                 f"url={predictions.shown(job.url)}")
    return "\n".join(lines)
