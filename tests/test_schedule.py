"""`schedule`: its next run follows the exchange calendar (holidays, early closes, daylight saving),
runs missed while it was down happen once (APScheduler's coalescing), and a real scheduler catches up
at start and stops after `max_runs`."""
import datetime as dt
import re
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from test_predict import trained_model

from forecast.inference.schedule import SessionCloseTrigger, build, next_run

UTC = dt.timezone.utc
HALF_HOUR = dt.timedelta(minutes=30)


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


CASES = [  # (exchange, after, next run at close + 30 min), UTC
    ("XNYS", "2024-11-27T22:00", "2024-11-29T18:30"),  # Thanksgiving closed; Friday closes early, 13:00 ET
    ("XNYS", "2024-11-29T18:29", "2024-11-29T18:30"),
    ("XNYS", "2024-11-29T18:30", "2024-12-02T21:30"),  # strictly after; then the weekend; 16:00 EST
    ("XNYS", "2024-12-24T19:00", "2024-12-26T21:30"),  # the 24th closed early at 13:00 ET; Christmas closed
    ("XNYS", "2024-03-08T22:00", "2024-03-11T20:30"),  # daylight saving from the 10th: 16:00 EDT = 20:00 UTC
    ("XNYS", "2018-12-04T22:00", "2018-12-06T21:30"),  # 5 Dec 2018: closed for a national day of mourning
    ("XLON", "2024-12-24T13:00", "2024-12-27T17:00"),  # London: 12:30 early close passed; 25th, 26th closed
]


@pytest.mark.parametrize("exchange,after,expected", CASES)
def test_next_run_follows_the_exchange_calendar(exchange, after, expected):
    assert next_run(at(after), exchange, HALF_HOUR) == at(expected)
    assert SessionCloseTrigger(exchange, HALF_HOUR).get_next_fire_time(None, at(after)) == at(expected)


def test_runs_missed_while_down_happen_once():
    """A run due three days ago (the machine was suspended): APScheduler with coalesce=True and
    misfire_grace_time=None runs it once, at once, then waits for the next close."""
    runs = []
    trigger = SessionCloseTrigger("XNYS", HALF_HOUR)
    scheduler = build(lambda: runs.append(time.time()), trigger, first_run=dt.datetime.now(UTC) - dt.timedelta(days=3))
    thread = threading.Thread(target=scheduler.start, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not runs and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # room for any further (uncoalesced) runs
    job = scheduler.get_job("predict")
    scheduler.shutdown(wait=True)
    thread.join(5)
    assert len(runs) == 1
    assert job.next_run_time == next_run(dt.datetime.now(UTC), "XNYS", HALF_HOUR)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return trained_model(tmp_path_factory)


def test_the_scheduler_catches_up_at_start_and_stops(model, tmp_path):
    db = tmp_path / "p.db"
    p = subprocess.run([sys.executable, "-m", "forecast", "schedule", f"logger.tracking_uri={model['tracking_uri']}",
                        f"predictions.url=sqlite:///{db}", "since=2018-12-17", "date=2018-12-31", "schedule.delay=1s",
                        "schedule.max_runs=1"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout.strip().splitlines()
    assert out[0] == "schedule: predict catch_up=true 0:00:01 after each XNYS close; first run now"
    assert "predict catch_up=true model=models:/forecast@champion" in out[1]
    assert re.fullmatch(r"predictions=20 sessions=10 stale=0 url=\S+", out[2]) and out[-1] == "schedule: stopped"
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(DISTINCT asof), min(asof) FROM predictions").fetchone() == (10, "2018-12-17")


@pytest.mark.parametrize("args,key", [(["schedule.delay=soon"], "schedule.delay"),
                                      (["schedule.exchange=NOPE"], "schedule.exchange"),
                                      (["model=models:/forecast@nope"], "model")])
def test_bad_input_is_one_line_before_anything_runs(model, tmp_path, capsys, args, key):
    from hydra.core.global_hydra import GlobalHydra

    from forecast.__main__ import main

    argv = list(sys.argv)
    with pytest.raises(SystemExit) as exit_:
        main(["schedule", f"logger.tracking_uri={model['tracking_uri']}", f"predictions.url=sqlite:///{tmp_path}/p.db",
              *args])
    GlobalHydra.instance().clear()
    sys.argv = argv
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith(f"error: {key}: ") and "\n" not in err, err
    assert not (tmp_path / "p.db").exists()
