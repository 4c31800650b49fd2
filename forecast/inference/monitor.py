"""`python -m forecast monitor model=<ref> [date=YYYY-MM-DD|today] [retrain=false]`: after predict,
the realised performance of a model version's stored predictions, its input drift against its
training period, and a calibrated performance-drift test; alerts into the predictions database.

Every step is a function of the store and the predictions table up to `date`, recomputed from the
start of the version's predictions on each run (the detector's state is its input series), so a
second run over the same data writes nothing new and prints the same alerts. The parts live in
forecast/monitoring/ (realised, drift, detectors, alerts, retrain); MLflow logging in
forecast/tracking/monitoring.py.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import polars as pl
from sqlalchemy.engine import Engine

from forecast.errors import UserError
from forecast.inference import predictions, sessions
from forecast.inference.predict import parse_date, store_tickers
from forecast.monitoring import alerts, detectors, drift, inputs, realised


@dataclass
class Job:
    name: str
    version: str
    alias: str
    run_id: str
    state: dict
    store: str
    tickers: list[str]
    url: str
    tracking_uri: str
    engine: Engine
    date: dt.date


def monitor(cfg) -> int:
    job = plan(cfg)
    horizon = job.state["horizon"]
    frame = realised.stored(job.engine, job.name, job.version, horizon, job.date)
    if frame.height == 0:
        raise UserError(f"model: no predictions of {job.name} v{job.version} up to {job.date} in "
                        f"{predictions.shown(job.url)}; run `python -m forecast predict` first")
    frame = realised.fill(job.engine, job.store, frame, job.name, job.version, horizon)
    scores = realised.session_scores(frame, int(cfg.block), float(cfg.cost_bps), horizon)
    rows = performance_alerts(job, frame, scores, detector(cfg.detector)) + input_alerts(job, frame, cfg.input)
    new = alerts.write(job.engine, rows)
    from forecast.tracking import monitoring

    logged = cfg.log_mlflow and scores.height
    run_id = monitoring.log_scores(job.tracking_uri, job.name, job.version, job.run_id, scores) if logged else None
    if cfg.retrain:
        new += maybe_retrain(job, scores, cfg.challenger)
    text = report(job, scores, alerts.read(job.engine, job.name, job.version, job.date), new, int(cfg.show))
    print(text)
    if run_id:
        monitoring.describe(job.tracking_uri, run_id, text)
    return 0


def plan(cfg) -> Job:
    """Check the model, its state, the store and the database before anything is read or written."""
    from forecast.tracking import runs

    ref = str(cfg.model_ref)
    name, version, run_id = runs.resolve_model(cfg.logger.tracking_uri, ref)
    state = runs.load_predict_state(run_id)
    store = str(cfg.data.store or state["store"])
    tickers, exchange = store_tickers(store, state)
    engine = predictions.connect(str(cfg.predictions.url))
    alerts.create(engine)
    codes = sorted(set(exchange.values()))
    day = max(sessions.latest_closed(c, dt.datetime.now(dt.timezone.utc)) for c in codes) \
        if str(cfg.date) == "today" else parse_date(cfg.date, "date")
    alias = ref.partition("@")[2] or "champion"
    return Job(name, version, alias, run_id, state, store, tickers, str(cfg.predictions.url),
               str(cfg.logger.tracking_uri), engine, day)


def detector(c) -> detectors.PageHinkley:
    return detectors.PageHinkley(float(c.delta), float(c.threshold), int(c.min_instances))


def performance_alerts(job: Job, frame: pl.DataFrame, scores: pl.DataFrame, ph: detectors.PageHinkley) -> list[dict]:
    """One `performance` alert per Page-Hinkley alarm on the standardised rank IC, dated by the target
    session of the alarm's as-of session (when its realised return, and so the alarm, was known)."""
    if scores.height == 0:
        return []
    known = dict(frame.group_by("asof").agg(pl.col("target").max()).iter_rows())
    dates = scores["date"].to_list()
    return [dict(model=job.name, version=job.version, session=known[dates[i]], kind="performance",
                 feature="rank_ic", statistic=stat, threshold=ph.threshold, detail=f"asof={dates[i]}")
            for i, stat in ph.alarms(realised.standardised(scores))]


def input_alerts(job: Job, frame: pl.DataFrame, c) -> list[dict]:
    """One `input` alert per drift episode of each feature over the sessions the version forecast.
    Price features (per ticker and session): PSI above the largest PSI of any window of the training
    and validation periods (drift.limits, at least `input.psi`) and a KS p-value below `input.ks_p`.
    Exogenous series and the news rate (one value per session, autocorrelated): the window mean's
    z-score beyond `input.z` (drift.mean_shift) and PSI above `input.psi`."""
    val = (dt.date.fromisoformat(job.state["val_start"]), dt.date.fromisoformat(job.state["test_start"]))
    groups = zip(inputs.training_inputs(job.store, job.state, job.tickers),
                 inputs.model_inputs(job.store, job.state, job.tickers, val[0], val[1] - dt.timedelta(days=1)),
                 inputs.model_inputs(job.store, job.state, job.tickers, frame["asof"].min(), frame["asof"].max()))
    out = []
    for (train_dates, train, names), (val_dates, val_values, _), (dates, values, _) in groups:
        if len(train) == 0 or len(dates) == 0:
            continue
        ref = drift.fit(train, names, int(c.bins))
        per_session = names[0].startswith(("exogenous:", "news:"))  # one value per session, not per ticker
        found = (series_drift(ref, train, dates, values, c) if per_session else
                 feature_drift(ref, (train_dates, train), (val_dates, val_values), dates, values, c))
        day = dates.unique().sort().to_list()
        out += [dict(model=job.name, version=job.version, session=day[s], kind="input", feature=feature,
                     statistic=value, threshold=limit, detail=detail)
                for feature, hits in found.items() for s, value, limit, detail in drift.episodes(hits)]
    return out


def feature_drift(ref, train: tuple, val: tuple, dates: pl.Series, values: np.ndarray, c) -> dict:
    """Per feature, (session, PSI, its threshold, KS p) of each drifting session."""
    window, min_rows = int(c.window), int(c.min_rows)
    limit = np.maximum(drift.limits(ref, train[1], *sessions_of(train[0]), window, min_rows, float(c.psi)),
                       drift.limits(ref, val[1], *sessions_of(val[0]), window, min_rows, float(c.psi)))
    hits = drift.drifting(ref, values, *sessions_of(dates), window, limit, float(c.ks_p), min_rows)
    return {f: [(s, v, float(limit[ref.names.index(f)]), f"ks_p={p:.2g}") for s, v, p in h] for f, h in hits.items()}


def series_drift(ref, train: np.ndarray, dates: pl.Series, values: np.ndarray, c) -> dict:
    """Per series, (session, |z| of the window mean, its threshold, PSI) of each drifting session."""
    index, n = sessions_of(dates)
    z = drift.mean_shift(train, values, index, n, int(c.window))  # (S, F)
    psi = drift.window_psi(ref, values, index, n, int(c.window), 1)  # (S, F)
    return {name: [(int(s), float(abs(z[s, f])), float(c.z), f"psi={psi[s, f]:.3g}")
                   for s in np.flatnonzero((np.nan_to_num(np.abs(z[:, f])) > float(c.z)) &
                                           (np.nan_to_num(psi[:, f]) > float(c.psi)))]
            for f, name in enumerate(ref.names)}


def sessions_of(dates: pl.Series) -> tuple[np.ndarray, int]:
    """(each row's session index (N,), the number of sessions) of a column of dates."""
    days = dates.unique().sort().cast(pl.Int32).to_numpy()
    return np.searchsorted(days, dates.cast(pl.Int32).to_numpy()), len(days)


def maybe_retrain(job: Job, scores: pl.DataFrame, c) -> int:
    """A challenger when this version has a performance alert and no retrain within `cooldown` sessions."""
    from forecast.monitoring import retrain

    held = alerts.read(job.engine, job.name, job.version, job.date)
    if c.require_alert and not any(a["kind"] == "performance" for a in held):
        return 0
    last = max((a["session"] for a in held if a["kind"] == "retrain"), default=None)
    if last is not None and scores.filter(pl.col("date") > last).height < int(c.cooldown):
        print(f"retrain: cooling down (last retrain {last}, cooldown {c.cooldown} sessions)")
        return 0
    code = job.state["exchanges"][job.tickers[0]]
    days = sessions.sessions(code, dt.date.fromisoformat(job.state["val_start"]) - dt.timedelta(days=3650), job.date)
    decision = retrain.run(job, scores, days[:len(days) - job.state["horizon"]], c)
    if decision is None:
        print("retrain: too few sessions for the challenger's windows")
        return 0
    verdict = "promoted" if decision.promoted else "kept"
    print(f"challenger {decision.run_id}: val IC {decision.challenger_ic:.4f} vs champion "
          f"{decision.champion_ic:.4f}: {verdict} (paired p={decision.p_value:.2g})")
    return alerts.write(job.engine, [dict(model=job.name, version=job.version, session=job.date, kind="retrain",
                                          feature=verdict, statistic=decision.challenger_ic,
                                          threshold=decision.champion_ic,
                                          detail=f"run={decision.run_id}" + (f" v{decision.version}"
                                                                             if decision.version else ""))])


def report(job: Job, scores: pl.DataFrame, held: list[dict], new: int, show: int) -> str:
    lines = [alerts.line(a) for a in held[:show]]
    if len(held) > show:
        lines.append(f"... {len(held) - show} more alerts")
    if scores.height:
        last = scores.row(-1, named=True)
        fmt = lambda v: "nan" if v is None or not np.isfinite(v) else f"{v:+.4f}"  # noqa: E731
        lines.append(f"{job.name} v{job.version} up to {scores['date'][-1]}: ic_20={fmt(last.get('ic_20'))} "
                     f"ic_60={fmt(last.get('ic_60'))} icir_60={fmt(last.get('icir_60'))} "
                     f"sessions={scores.height}")
    first = min((a["session"] for a in held if a["kind"] != "retrain"), default=None)
    lines.append(f"alerts={sum(a['kind'] != 'retrain' for a in held)} first_alert={first or 'none'} new={new}")
    return "\n".join(lines)
