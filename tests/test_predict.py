"""`predict`: a registered model's forecasts per as-of session in a real SQL table, equal to what train
logged, causal, idempotent, one transaction per session, catch-up exactly once (even after SIGKILL)."""
import datetime as dt
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch

from conftest import CONF, ROOT, TINY, cli
from data_pipelines.store import read_prices, write_prices
from forecast.inference import sessions

TICKERS = ["IXIC", "SPX"]
VAL, TEST = "2014-01-02", "2016-01-04"  # the model's split dates: its test split runs 2016-2018
MODALITIES = "modalities=[price,ticker,calendar]"  # a dict of inputs, as the pyfunc takes them


def copy_store(dst: Path, until: dict[str, str] | None = None) -> str:
    """SPX and IXIC of the bundled sample, each cut at `until[ticker]` (inclusive) when given."""
    frames = read_prices(ROOT / "data" / "sample", TICKERS).partition_by("ticker", as_dict=True)
    cut = {t: f.drop("ticker") for (t,), f in frames.items()}
    for t, day in (until or {}).items():
        cut[t] = cut[t].filter(pl.col("date") <= dt.date.fromisoformat(day))
    write_prices(dst, cut, exchange="XNYS")
    return str(dst)


def trained_model(tmp_path_factory) -> dict:
    """One tiny registered model per test session (shared by test_predict, test_schedule and test_serving
    through a folder of the session's temporary directory): store, tracking_uri, run_id."""
    base = tmp_path_factory.getbasetemp() / "predict_model"
    marker = base / "model.json"
    if marker.exists():
        return json.loads(marker.read_text())
    from hydra import compose, initialize_config_dir

    from forecast.training.train import train

    store, uri = copy_store(base / "store"), f"sqlite:///{base}/mlflow.db"
    # calibrate=none: calibrated, a 2-epoch model is the constant hist_mean, and these tests need forecasts
    # that move with the inputs (test_predict_calibrated.py covers calibration)
    overrides = [*TINY, f"data.store={store}", f"data.tickers=[{','.join(TICKERS)}]", MODALITIES,
                 f"data.val_start={VAL}", f"data.test_start={TEST}", "register=true", "calibrate=none",
                 f"logger.tracking_uri={uri}", f"trainer.default_root_dir={base}/ckpt"]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        train(compose("train", overrides=overrides))
    from mlflow.tracking import MlflowClient

    run_id = MlflowClient(uri).get_model_version_by_alias("forecast", "champion").run_id
    info = dict(store=store, tracking_uri=uri, run_id=run_id, base=str(base))
    marker.write_text(json.dumps(info))
    return info


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return trained_model(tmp_path_factory)


def run_predict(capsys, model, db, *args) -> tuple[int, list[str], str]:
    """`python -m forecast predict ...` through the CLI's entry point, in this process; `db` is a SQLite
    file or a database URL."""
    url = db if isinstance(db, str) else f"sqlite:///{db}"
    return cli(capsys, ["predict", f"logger.tracking_uri={model['tracking_uri']}", f"predictions.url={url}", *args])


def rows(db) -> pl.DataFrame:
    with sqlite3.connect(db) as c:
        return pl.read_database("SELECT * FROM predictions ORDER BY asof, ticker", c)


SUMMARY = re.compile(r"predictions=(\d+) sessions=(\d+) stale=(\d+) url=(\S+)")


def test_one_session_then_the_same_again_writes_nothing(model, tmp_path, capsys):
    db = tmp_path / "p.db"
    code, out, _ = run_predict(capsys, model, db, "date=2018-12-27")
    assert code == 0 and SUMMARY.fullmatch(out[-1]).groups() == ("2", "1", "0", f"sqlite:///{db}")
    assert out[0].split() == ["ticker", "asof", "target", "forecast", "direction"]
    assert [line.split()[:3] for line in out[1:3]] == [[t, "2018-12-27", "2018-12-28"] for t in TICKERS]
    first = rows(db)
    assert first.height == 2 and first["model"].to_list() == ["forecast"] * 2 and first["version"][0] == "1"
    assert first["realised"].is_null().all() and first["quantiles"].is_null().all()
    assert (first["direction"] == first["forecast"].sign()).all() and first["horizon"].to_list() == [1, 1]
    code, out, _ = run_predict(capsys, model, db, "date=2018-12-27")
    assert code == 0 and out[-1].startswith("predictions=0 sessions=1 stale=0")
    assert rows(db).drop("created_at").equals(first.drop("created_at"))
    code, out, _ = run_predict(capsys, model, db, "date=2018-12-25")  # Christmas: not a session
    assert code == 0 and out == ["2018-12-25 is not a session of XNYS: nothing to predict"]
    assert rows(db).height == 2


def test_forecasts_equal_the_ones_train_logged(model, tmp_path, capsys):
    """Same normalisation, same windows, same units: predict over part of the test split reproduces
    the run's predictions/test_predictions.parquet."""
    import mlflow

    db = tmp_path / "p.db"
    code, out, _ = run_predict(capsys, model, db, "catch_up=true", "since=2017-06-01", "date=2017-07-31")
    assert code == 0
    got = rows(db).select("ticker", pl.col("asof").str.to_date().alias("date"), "forecast")
    mlflow.set_tracking_uri(model["tracking_uri"])
    logged = pl.read_parquet(mlflow.artifacts.download_artifacts(
        f"runs:/{model['run_id']}/predictions/test_predictions.parquet", dst_path=str(tmp_path)))
    both = got.join(logged, on=["ticker", "date"], how="inner")
    assert both.height == got.height == 2 * len(sessions.sessions("XNYS", dt.date(2017, 6, 1), dt.date(2017, 7, 31)))
    assert np.allclose(both["forecast"], both["pred"], rtol=0, atol=1e-6)


def test_catch_up_runs_each_session_once_and_none_on_holidays(model, tmp_path, capsys):
    db = tmp_path / "p.db"
    code, out, _ = run_predict(capsys, model, db, "catch_up=true", "since=2018-11-19", "date=2018-11-30")
    assert code == 0 and out[-1].startswith("predictions=18 sessions=9 ")  # 9 sessions: not Thanksgiving (22nd)
    code, out, _ = run_predict(capsys, model, db, "catch_up=true", "date=2018-12-07")  # after the last stored one
    assert code == 0 and out[-1].startswith("predictions=8 sessions=4 ")  # 5 Dec 2018: closed (national mourning)
    code, out, _ = run_predict(capsys, model, db, "catch_up=true", "date=2018-12-07")
    assert code == 0 and out[-1].startswith("predictions=0 sessions=0 ")
    got = rows(db)
    days = sessions.sessions("XNYS", dt.date(2018, 11, 19), dt.date(2018, 12, 7))
    assert sorted(set(got["asof"])) == [str(d) for d in days] and "2018-11-22" not in got["asof"]
    assert got.group_by("asof").len()["len"].to_list() == [2] * len(days)
    early = got.filter(pl.col("asof") == "2018-11-21")["target"].unique().to_list()
    assert early == ["2018-11-23"]  # the forecast made before Thanksgiving is for the (early-close) Friday


def test_forecast_is_causal_and_later_bars_change_nothing(model, tmp_path, capsys):
    """The forecast for as-of t from a store that ends at t equals the one from the full store; adding
    the bars after t writes nothing; a ticker without the bar of t is stale until that bar arrives."""
    t = "2017-03-01"
    full, db = tmp_path / "full.db", tmp_path / "p.db"
    run_predict(capsys, model, full, f"date={t}")
    store = copy_store(tmp_path / "store", until={"SPX": t, "IXIC": "2017-02-28"})
    code, out, _ = run_predict(capsys, model, db, f"date={t}", f"data.store={store}")
    assert code == 0 and out[-1].startswith("predictions=1 sessions=1 stale=1")
    assert "IXIC (last bar 2017-02-28)" in out[-2]
    write_prices(store, {k: f.drop("ticker") for (k,), f in read_prices(model["store"], TICKERS)
                         .partition_by("ticker", as_dict=True).items()})  # every later bar arrives
    code, out, _ = run_predict(capsys, model, db, f"date={t}", f"data.store={store}")
    assert code == 0 and out[-1].startswith("predictions=1 sessions=1 stale=0")  # IXIC only: SPX unchanged
    assert rows(db).drop("created_at").equals(rows(full).drop("created_at"))


def test_a_revised_bar_updates_the_row_and_says_so(model, tmp_path, capsys):
    t, db = "2017-03-01", tmp_path / "p.db"
    store = copy_store(tmp_path / "store")
    run_predict(capsys, model, db, f"date={t}", f"data.store={store}")
    before = rows(db)
    spx = read_prices(store, ["SPX"]).drop("ticker")
    revised = spx.with_columns(close=pl.when(pl.col("date") == dt.date(2017, 2, 28)).then(pl.col("close") * 1.01)
                               .otherwise(pl.col("close")))
    write_prices(store, {"SPX": revised})
    code, out, err = run_predict(capsys, model, db, f"date={t}", f"data.store={store}")
    assert code == 0 and out[-1].startswith("predictions=1 ") and out[-2].startswith("updated 1 rows"), err
    after = rows(db)
    assert after.height == 2 and after["updated_at"].is_null().to_list() == [True, False]  # IXIC, SPX
    assert after["forecast"][0] == before["forecast"][0] and after["forecast"][1] != before["forecast"][1]


def test_killed_catch_up_resumes_with_no_duplicate_and_no_gap(model, tmp_path, capsys):
    """SIGKILL a long catch-up (about 1,500 sessions) as soon as its first sessions are in; every session
    a reader sees meanwhile is whole; the re-run completes it: each session exactly once."""
    db = tmp_path / "p.db"
    args = ["catch_up=true", "since=2013-01-02", "date=2018-12-28"]
    cmd = [sys.executable, "-m", "forecast", "predict", *args, f"logger.tracking_uri={model['tracking_uri']}",
           f"predictions.url=sqlite:///{db}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if db.exists():
            try:
                with sqlite3.connect(db) as c:
                    counts = [n for (n,) in c.execute("SELECT count(*) FROM predictions GROUP BY asof")]
            except sqlite3.OperationalError:  # the table is not created yet
                counts = []
            assert set(counts) <= {2}  # a reader never sees half a session
            if counts:
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    expected = sessions.sessions("XNYS", dt.date(2013, 1, 2), dt.date(2018, 12, 28))
    killed = rows(db)
    assert proc.returncode == -signal.SIGKILL and 0 < killed["asof"].n_unique() < len(expected)
    code, out, err = run_predict(capsys, model, db, *args)  # the re-run
    assert code == 0, err[-2000:]
    written = int(SUMMARY.fullmatch(out[-1]).group(1))
    got = rows(db)
    assert written == got.height - killed.height and got.height == 2 * len(expected)
    assert got.select("ticker", "asof").is_unique().all() and sorted(set(got["asof"])) == [str(d) for d in expected]


ERRORS = [
    (["model=models:/forecast@nope"], "model", "models:/forecast@champion"),
    (["model=0123456789abcdef"], "model", "registered"),
    (["data.store=no/such/store"], "data.store", "no/such/store"),
    (["date=2018-13-45"], "date", "YYYY-MM-DD"),
    (["catch_up=true", "since=soon"], "since", "YYYY-MM-DD"),
]


@pytest.mark.parametrize("args,key,expect", ERRORS)
def test_user_errors_are_one_line_and_write_nothing(model, tmp_path, capsys, args, key, expect):
    db = tmp_path / "p.db"
    code, out, err = run_predict(capsys, model, db, *args)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(f"error: {key}: ") and expect in err, err
    assert not db.exists()


def test_store_and_database_errors_are_one_line(model, tmp_path, capsys):
    goog = tmp_path / "goog"
    write_prices(goog, {"GOOG": read_prices(ROOT / "data" / "sample", ["GOOG"]).drop("ticker")})
    code, _, err = run_predict(capsys, model, tmp_path / "p.db", f"data.store={goog}")
    assert code == 2 and err.startswith("error: data.store: ") and "IXIC" in err and "SPX" in err
    code, _, err = run_predict(capsys, model, tmp_path / "no" / "such" / "dir.db")
    assert code == 2 and err.startswith("error: predictions.url: cannot use sqlite:///") and "\n" not in err
    for url in ["not-a-url", "postgresql+psycopg://u:secret@127.0.0.1:1/db"]:  # unparsable; nothing listens
        code, _, err = run_predict(capsys, model, url)
        assert code == 2 and err.startswith("error: predictions.url: ") and "\n" not in err and "secret" not in err


def test_a_missing_modality_is_named():
    from forecast.errors import UserError
    from forecast.inference.features import check_store

    state = {"modalities": ["price", "exogenous"], "exogenous": {"series": ["vix", "nope"]}}
    with pytest.raises(UserError, match=r"lacks the exogenous series \['nope'\]"):
        check_store(str(ROOT / "data" / "sample"), state)
    with pytest.raises(UserError, match="'news' needs"):
        check_store(str(ROOT / "data" / "sample"), {"modalities": ["price", "news"]})


@pytest.mark.parametrize("level_window", [None, 20])
def test_stored_statistics_rebuild_the_training_windows(level_window):
    """Every modality's inputs from the stored state equal the training windows of the same anchors."""
    from forecast.data.market import MarketData
    from forecast.inference import features

    dm = MarketData(str(ROOT / "data" / "sample"), TICKERS, window=16, val_start=VAL, test_start=TEST,
                    modalities=["price", "ticker", "calendar", "exogenous"], exog_level_window=level_window)
    dm.setup()
    state = json.loads(json.dumps(dm.predict_state()))  # as stored
    anchors = dm.frame[dm.anchors["test"].numpy()].select("ticker", "date")
    first, last = dt.date(2017, 1, 3), dt.date(2017, 2, 28)
    frame = features.read_frame(dm.store, state, TICKERS, first, last)
    inputs = features.inputs(frame, state, dm.store)
    picked = frame.with_row_index("row").join(anchors.filter(pl.col("date").is_between(first, last)),
                                              on=["ticker", "date"]).sort("ticker", "date")
    ours = features.dataset(inputs, frame, picked["row"].to_numpy(), 16)[list(range(picked.height))]
    keys = anchors.with_row_index("i").join(picked.select("ticker", "date"), on=["ticker", "date"])
    theirs = dm.dataset("test")[keys.sort("ticker", "date")["i"].to_list()]
    names = {"x", "ticker", "calendar", "exog", "exog_mask"}
    assert picked.height == 2 * 39 and set(ours) - {"y", "row", "date"} == names
    for k in names:
        assert torch.equal(ours[k], theirs[k]), k


@pytest.fixture(scope="module")
def postgres_url():
    """A throw-away PostgreSQL cluster on a loopback port (initdb refuses root: run as `postgres`)."""
    root = os.geteuid() == 0
    if not (shutil.which("initdb") and shutil.which("pg_ctl")) or importlib.util.find_spec("psycopg") is None or \
            (root and shutil.which("runuser") is None):
        pytest.skip("needs PostgreSQL (initdb, pg_ctl) and psycopg")
    as_user = ["runuser", "-u", "postgres", "--"] if root else []
    folder = Path(tempfile.mkdtemp(prefix="forecast-pg-"))
    if root:
        shutil.chown(folder, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = folder / "data"
    subprocess.run([*as_user, "initdb", "-D", str(data), "-U", "forecast", "--auth=trust"], check=True,
                   capture_output=True)
    subprocess.run([*as_user, "pg_ctl", "-D", str(data), "-l", str(folder / "log"), "-w", "start", "-o",
                    f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"], check=True, capture_output=True)
    yield f"postgresql+psycopg://forecast@127.0.0.1:{port}/postgres"
    subprocess.run([*as_user, "pg_ctl", "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


def test_postgresql_by_url(model, postgres_url, capsys):
    from sqlalchemy import create_engine, text

    code, out, err = run_predict(capsys, model, postgres_url, "catch_up=true", "since=2018-11-19", "date=2018-11-30")
    assert code == 0 and out[-1].startswith("predictions=18 sessions=9 stale=0 url=postgresql+psycopg://"), err
    code, out, _ = run_predict(capsys, model, postgres_url, "date=2018-11-23")
    assert code == 0 and out[-1].startswith("predictions=0 sessions=1 ")
    with create_engine(postgres_url).connect() as c:
        got = c.execute(text("SELECT count(*), count(DISTINCT asof), count(quantiles), min(target) FROM predictions"))
        assert got.one() == (18, 9, 0, dt.date(2018, 11, 20))



class QuantileStub(torch.nn.Module):
    """A model whose head gives quantiles (B, 3): q10, q50, q90 = mean(x) - 1, mean(x), mean(x) + 1."""

    head = SimpleNamespace(taus=[0.1, 0.5, 0.9], point=lambda raw: raw[:, 1])

    def forward(self, x, ticker=None, **inputs):
        return x.mean(dim=(1, 2))[:, None] + torch.tensor([-1.0, 0.0, 1.0])  # (B, 3)

    def predict_step(self, batch, i):
        return self(batch["x"], batch["ticker"])


def test_a_quantile_head_fills_the_quantiles_and_serves_them():
    """predict's rows and the pyfunc's output carry q10/q50/q90 in log-return units; the forecast is q50."""
    from forecast.evaluation.calibration import Calibration
    from forecast.inference import features, predict
    from forecast.tracking.serving import ForecastModel

    state = {"window": 4, "exog_level_window": None, "features": ["ret", "gap", "intraday", "range", "dvol"],
             "feature_mean": [0.0] * 5, "feature_std": [1.0] * 5, "vocab": ["SPX"], "modalities": ["price"],
             "horizon": 1, "target_std": 0.01}
    day = dt.date(2018, 12, 27)
    frame = features.read_frame(str(ROOT / "data" / "sample"), state, ["SPX"], day, day).with_row_index("row")
    inputs = features.inputs(frame, state, "")
    rows = frame.filter(pl.col("date") == day)["row"].to_numpy()
    out = predict.run_model(QuantileStub(), features.dataset(inputs, frame, rows, 4), 8, scale=0.01)
    job = predict.Job("m", "1", "r", state, "", ["SPX"], {"SPX": "XNYS"}, "sqlite://")
    (row,) = predict.session_rows(job, day, frame.filter(pl.col("date") == day).select("row", "ticker"), out)
    assert row["quantiles"] == pytest.approx({"q10": row["forecast"] - 0.01, "q50": row["forecast"],
                                              "q90": row["forecast"] + 0.01})
    served = ForecastModel()
    served.calibration = Calibration()  # none stored: the raw forecast
    served.module, served.scale = QuantileStub(), 0.01
    batch = features.dataset(inputs, frame, rows, 4)[[0]]
    got = served.predict(None, {"x": batch["x"].numpy(), "ticker": batch["ticker"].numpy()})
    assert list(got.columns) == ["forecast", "direction", "q10", "q50", "q90"]
    assert got["forecast"][0] == pytest.approx(row["forecast"])
    assert got["q90"][0] == pytest.approx(row["forecast"] + 0.01)
