"""`python -m forecast schedule [model=..] [schedule.delay=30min]`: a long-running scheduler that runs
`predict catch_up=true` a delay after every session close of the model's exchange, and once at start.

APScheduler 3 runs the job (`coalesce=True`, `misfire_grace_time=None`, `max_instances=1`: a run
missed while the process was suspended happens once, late, never twice at once), and the trigger
(`SessionCloseTrigger`) asks exchange-calendars for the next close, so holidays, weekends and early
closes (XNYS 13:00 ET on the day after Thanksgiving) need no cron arithmetic. Still, what makes
missed days safe is catch-up, not the scheduler: every run forecasts every session after the last
one stored, so a day lost to downtime (of the scheduler, or of cron or a systemd timer doing the same,
see deploy/) is made up by the next run, exactly once. Each run is a `predict` subprocess, the same
command the deploy units run.
"""
from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
from collections import Counter

import numpy as np
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.base import BaseTrigger

from data_pipelines.store import StoreError
from forecast.errors import ConfigError
from forecast.inference import sessions

JOB_DEFAULTS = dict(coalesce=True, misfire_grace_time=None, max_instances=1)


def next_run(after: dt.datetime, exchange: str, delay: dt.timedelta) -> dt.datetime:
    """The first session close of `exchange` plus `delay` strictly after `after` (aware), in UTC."""
    utc = after.astimezone(dt.timezone.utc).replace(tzinfo=None)
    _, close = sessions.closes(exchange, (utc - delay - dt.timedelta(days=7)).date())
    fire = close + np.timedelta64(int(delay.total_seconds()), "s")  # (S,) UTC
    i = int(np.searchsorted(fire, np.datetime64(utc, "s"), side="right"))
    if i == len(fire):
        raise ConfigError("schedule.exchange", f"the {exchange} calendar ends before {after}")
    return fire[i].astype(dt.datetime).replace(tzinfo=dt.timezone.utc)


class SessionCloseTrigger(BaseTrigger):
    """Fires `delay` after each session close of `exchange`."""

    def __init__(self, exchange: str, delay: dt.timedelta):
        self.exchange, self.delay = exchange, delay

    def get_next_fire_time(self, previous_fire_time, now):
        return next_run(previous_fire_time or now, self.exchange, self.delay)

    def __str__(self) -> str:
        return f"{self.delay} after each {self.exchange} close"


def build(job, trigger: BaseTrigger, first_run: dt.datetime | None = None,
          max_runs: int | None = None) -> BlockingScheduler:
    """A scheduler running `job` on `trigger`, first at `first_run` when given (now: catch up at start),
    stopping after `max_runs` runs."""
    scheduler = BlockingScheduler(job_defaults=JOB_DEFAULTS, timezone=dt.timezone.utc)
    scheduler.add_job(job, trigger, id="predict", **({"next_run_time": first_run} if first_run else {}))
    done = Counter()

    def finished(event) -> None:
        done["runs"] += 1
        if max_runs is not None and done["runs"] >= max_runs:
            scheduler.shutdown(wait=False)
        else:
            print(f"next run: {scheduler.get_job('predict').next_run_time.isoformat()} ({trigger})", flush=True)

    scheduler.add_listener(finished, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    return scheduler


def predict_command(cfg) -> list[str]:
    """The `predict catch_up=true` command line of this config."""
    keys = {"model": cfg.model_ref, "logger.tracking_uri": cfg.logger.tracking_uri,
            "predictions.url": cfg.predictions.url, "data.store": cfg.data.store, "since": cfg.since,
            "date": None if str(cfg.date) == "today" else cfg.date}  # a fixed last session, for tests
    return [sys.executable, "-m", "forecast", "predict", "catch_up=true",
            *[f"{k}={v}" for k, v in keys.items() if v is not None]]


def monitor_command(cfg) -> list[str]:
    """The `monitor` command line run after predict (schedule.monitor=true): same model, store,
    database and date."""
    command = predict_command(cfg)
    return [*command[:3], "monitor", *[a for a in command[4:] if not a.startswith(("catch_up=", "since="))]]


def run_predict(command: list[str], then: list[str] | None = None) -> None:
    """One run of the job: the predict process, its summary line (its errors go to stderr as they are);
    then the `then` command (monitor) the same way, once predict succeeded."""
    for step in [command, *([then] if then else [])]:
        started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        print(f"{started} {' '.join(step[3:])}", flush=True)
        result = subprocess.run(step, stdout=subprocess.PIPE, text=True)
        lines = result.stdout.strip().splitlines()
        print(lines[-1] if lines else "(no output)", flush=True)  # the summary line, or the error on stderr
        if result.returncode != 0:
            print(f"{step[3]} exited with code {result.returncode}; the next run catches up", flush=True)
            return


def model_exchange(cfg) -> str:
    """The exchange of most of the model's tickers (from its stored state and the store's manifest);
    an unknown model or a store without its tickers is a one-line error here."""
    from forecast.inference.predict import store_tickers
    from forecast.tracking import runs

    _, _, run_id = runs.resolve_model(cfg.logger.tracking_uri, str(cfg.model_ref))
    state = runs.load_predict_state(run_id)
    _, exchange = store_tickers(str(cfg.data.store or state["store"]), state)
    return Counter(exchange.values()).most_common(1)[0][0]


def schedule(cfg) -> int:
    import pandas as pd

    s = cfg.schedule
    try:
        delay = pd.Timedelta(str(s.delay)).to_pytimedelta()
    except ValueError:
        delay = None
    if delay is None or delay < dt.timedelta(0):
        raise ConfigError("schedule.delay", f"must be a duration >= 0 such as 30min, 90s or 1h, got {s.delay!r}")
    if s.max_runs is not None and int(s.max_runs) < 1:
        raise ConfigError("schedule.max_runs", f"must be null or >= 1, got {s.max_runs}")
    exchange = model_exchange(cfg)  # the model, its state and the store are checked before the first run
    exchange = str(s.exchange) if s.exchange else exchange
    try:
        sessions.closes(exchange, dt.date.today())  # an unknown exchange fails here, before anything runs
    except StoreError as e:
        raise ConfigError("schedule.exchange", str(e)) from None
    command = predict_command(cfg)
    then = monitor_command(cfg) if s.get("monitor") else None
    now = dt.datetime.now(dt.timezone.utc)
    scheduler = build(lambda: run_predict(command, then), SessionCloseTrigger(exchange, delay),
                      now if s.at_start else None,
                      None if s.max_runs is None else int(s.max_runs))
    signal.signal(signal.SIGTERM, lambda *_: scheduler.shutdown(wait=False))
    print(f"schedule: predict catch_up=true{' then monitor' if then else ''} {delay} after each {exchange} close; "
          "first run "
          f"{'now' if s.at_start else next_run(now, exchange, delay).isoformat()}",
          flush=True)
    scheduler.start()
    print("schedule: stopped", flush=True)
    return 0
