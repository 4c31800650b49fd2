"""`monitor`: on a real store, a real registered model and a real predictions database, with the
relation planted in the stored forecasts (their correlation with the realised return flips sign at a
known session) and input drift planted in the market (`synth drift.kind=shift`): no alert before the
flip and a performance alert after it; an input alert on the shifted series only; a second run writes
nothing; the calibrated detector keeps its false-alarm bound on stationary series; bad input is one line."""
import datetime as dt
import sqlite3
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from conftest import CONF, cli
from forecast.inference import predictions, sessions
from forecast.monitoring import detectors, realised

SHIFT = "2024-10-15"  # the LEAD series' published level jumps (the market's returns do not change)
FLIP = dt.date(2024, 10, 22)  # the stored forecasts' relation to the realised return flips from here
VAL, TEST, LAST = "2024-06-03", "2024-08-01", dt.date(2024, 12, 27)
THRESHOLD = 10.0  # conf/monitor.yaml's calibrated Page-Hinkley threshold


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    """A 20-ticker synthetic market with a shift in LEAD, its store, and a tiny registered model."""
    from hydra import compose, initialize_config_dir

    from data_pipelines.synthetic import generate
    from forecast.training.train import train

    base = tmp_path_factory.mktemp("monitor")
    generate(base / "raw", tickers=20, days=300, seed=3, strength=dict(price=0.2, exogenous=0.1), split=False,
             drift=dict(date=SHIFT, kind="shift", size=4.0))
    subprocess.run([sys.executable, "-m", "forecast", "ingest", f"path={base / 'raw'}", f"store={base / 'store'}"],
                   check=True, capture_output=True)
    uri = f"sqlite:///{base}/mlflow.db"
    overrides = ["data.window=8", "data.batch_size=256", "model.d_model=8", "trainer.max_epochs=1",
                 "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
                 f"data.store={base}/store", "data.tickers=null", "modalities=[price,ticker,exogenous]",
                 f"data.val_start={VAL}", f"data.test_start={TEST}", "register=true", "baselines=[]",
                 f"logger.tracking_uri={uri}", f"trainer.default_root_dir={base}/ckpt"]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        train(compose("train", overrides=overrides))
    return dict(base=base, store=str(base / "store"), uri=uri)


def plant_forecasts(market, db, flip: dt.date | None) -> None:
    """Stored forecasts for every as-of session from TEST to LAST, written with the predictions table's
    own helper: correlated about +0.3 with the realised return, and -0.3 from `flip` on."""
    from forecast.tracking import runs

    name, version, run_id = runs.resolve_model(market["uri"], "models:/forecast@champion")
    engine = predictions.connect(f"sqlite:///{db}")
    days = sessions.sessions("XNYS", dt.date.fromisoformat(TEST), LAST)
    grid = pl.DataFrame(dict(asof=days, target=[sessions.after("XNYS", d, 1) for d in days])).join(
        pl.DataFrame(dict(ticker=[f"S{i:04d}" for i in range(20)])), how="cross")
    r = realised.realised_returns(market["store"], grid)["new"].to_numpy()
    rng = np.random.default_rng(0)
    sign = np.where(grid["asof"].to_numpy() >= np.datetime64(flip), -1.0, 1.0) if flip else 1.0
    f = 0.001 * (sign * r / np.nanstd(r) + 3.0 * rng.standard_normal(len(r)))
    grid = grid.with_columns(forecast=f)
    for (day,), g in grid.group_by("asof", maintain_order=True):
        predictions.write_session(engine, [dict(model=name, version=version, ticker=t, asof=day, horizon=1, target=tg,
                                                forecast=float(x), direction=int(np.sign(x)), quantiles=None,
                                                input_hash="planted", run_id=run_id)
                                           for t, tg, x in g.select("ticker", "target", "forecast").iter_rows()])


def run_monitor(capsys, market, db, *args) -> tuple[int, list[str], str]:
    return cli(capsys, ["monitor", f"logger.tracking_uri={market['uri']}", f"predictions.url=sqlite:///{db}",
                        f"date={LAST}", f"data.store={market['store']}", *args])


def table(db, name: str) -> pl.DataFrame:
    with sqlite3.connect(db) as c:
        frame = pl.read_database(f"SELECT * FROM {name} ORDER BY 1, 2, 3, 4, 5", c)
    return frame.with_columns(*[pl.col(k).str.to_date() for k in ("session", "asof", "target") if k in frame.columns])


def test_flip_alerts_after_it_and_never_before_and_a_second_run_changes_nothing(market, tmp_path, capsys):
    db = tmp_path / "p.db"
    plant_forecasts(market, db, FLIP)
    code, out, err = run_monitor(capsys, market, db)
    assert code == 0, err
    perf = table(db, "alerts").filter(pl.col("kind") == "performance")
    assert perf.height >= 1 and perf["session"].min() > FLIP  # none before, one after
    assert len(sessions.sessions("XNYS", FLIP, perf["session"].min())) <= 21
    assert out[-1] == f"alerts={table(db, 'alerts').height} first_alert={table(db, 'alerts')['session'].min()} " \
        f"new={table(db, 'alerts').height}"
    filled = table(db, "predictions")
    assert filled["realised"].is_not_null().all()  # every target close is in the store
    first_alerts, mlflow_steps = table(db, "alerts"), metric_steps(market["uri"])
    code, again, _ = run_monitor(capsys, market, db)
    assert code == 0 and again[:-1] == out[:-1] and again[-1].endswith("new=0")
    assert table(db, "alerts").drop("created_at").equals(first_alerts.drop("created_at"))
    assert table(db, "predictions").equals(filled)  # realised returns written once, never rewritten
    assert metric_steps(market["uri"]) == mlflow_steps  # nothing logged twice
    assert monitoring_run(market["uri"]).data.tags["mlflow.note.content"].startswith(f"**monitor**: {again[-1]}")


def monitoring_run(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.`forecast.monitor` = 'forecast/1'")[0]


def metric_steps(uri: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    return [m.step for m in MlflowClient(uri).get_metric_history(monitoring_run(uri).info.run_id, "monitor/rank_ic")]


def test_shift_is_input_drift_of_that_series_only(market, tmp_path, capsys):
    db = tmp_path / "p.db"
    plant_forecasts(market, db, None)
    code, out, err = run_monitor(capsys, market, db, "log_mlflow=false")
    assert code == 0, err
    inputs = table(db, "alerts").filter(pl.col("kind") == "input")
    assert inputs["feature"].unique().to_list() == ["exogenous:LEAD"], out
    assert inputs["session"].min() >= dt.date.fromisoformat(SHIFT)
    assert table(db, "alerts").filter(pl.col("kind") == "performance").height == 0  # the relation held


def test_calibrated_detector_keeps_its_false_alarm_bound():
    """At the configured threshold, 20,000 stationary sessions (20 streams of 1,000; a model with a
    steady IC, fat-tailed noise) give at most one false alarm per 1,000; river's defaults do not."""
    rng = np.random.default_rng(7)
    streams = [0.8 + rng.standard_t(6, 1000) / np.sqrt(1.5) for _ in range(20)]  # unit variance
    alarms = [len(detectors.PageHinkley(0.5, THRESHOLD).alarms(z)) for z in streams]
    assert max(alarms) <= 1 and sum(alarms) <= 20 * 1000 / 1000
    default = detectors.PageHinkley(delta=0.005, threshold=2.0, min_instances=30)
    assert sum(len(default.alarms(z)) for z in streams) > 20
    calibrated = detectors.calibrate(rng.standard_normal(5000), rate=1e-3, streams=40, length=500, seed=1)
    fresh = detectors.false_alarm_rate(detectors.PageHinkley(0.5, calibrated["threshold"]),
                                       rng.standard_normal(5000), 40, 500, seed=2)
    assert fresh <= 2e-3 and calibrated["threshold"] <= THRESHOLD


@pytest.mark.parametrize("args,message", [
    (["detector.threshold=-1"], "error: detector.threshold: input should be greater than 0"),
    (["+input.bogus=1"], "error: input.bogus: extra inputs are not permitted"),
    (["date=2024-13-01"], "error: date:"),
    (["model=models:/nope@champion"], "error: model: models:/nope@champion is not in"),
])
def test_bad_input_is_one_line(market, tmp_path, capsys, args, message):
    code, out, err = run_monitor(capsys, market, tmp_path / "p.db", *args)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(message), err


def test_no_predictions_is_one_line(market, tmp_path, capsys):
    code, _, err = run_monitor(capsys, market, tmp_path / "empty.db")
    assert code == 2 and err.startswith("error: model: no predictions of forecast v1") and len(err.splitlines()) == 1


def test_schedule_runs_monitor_after_predict_with_the_same_references():
    from omegaconf import OmegaConf

    from forecast.inference.schedule import monitor_command, predict_command

    cfg = OmegaConf.create(dict(model_ref="models:/forecast@champion", logger=dict(tracking_uri="sqlite:///m.db"),
                                predictions=dict(url="sqlite:///p.db"), data=dict(store="s"), since="2024-01-02",
                                date="2024-12-27"))
    assert predict_command(cfg)[3:5] == ["predict", "catch_up=true"]
    assert monitor_command(cfg)[3:] == ["monitor", "model=models:/forecast@champion", "logger.tracking_uri=sqlite:///m.db",
                                        "predictions.url=sqlite:///p.db", "data.store=s", "date=2024-12-27"]


@pytest.mark.parametrize("command,config", [("monitor", "monitor"), ("schedule", "schedule")])
def test_the_yaml_defaults_pass_the_schema(command, config):
    from hydra import compose, initialize_config_dir

    from forecast.config import check

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        check(command, compose(config))


def test_synth_break_changes_the_market_only_from_its_date(tmp_path):
    """shift: the same returns, LEAD published `size` std higher from the break on; flip: the same
    market before the break, the planted reversal of the opposite sign after it; both in oracle.json."""
    import json

    from data_pipelines.synthetic import generate, loading_factor

    kw = dict(tickers=8, days=160, seed=5, strength=dict(price=0.6), split=False, news_rate=0.0)
    base, shift, flip = (tmp_path / k for k in ("base", "shift", "flip"))
    generate(base, **kw)
    generate(shift, **kw, drift=dict(date="2024-10-01", kind="shift", size=3.0))
    generate(flip, **kw, drift=dict(date="2024-10-01", kind="flip"))
    info = json.loads((flip / "oracle.json").read_text())["drift"]
    assert info["kind"] == "flip" and info["session"] == "2024-10-01"
    decay = loading_factor(10, 5, dict(kind="decay", sessions=4))
    assert decay.tolist() == [1, 1, 1, 1, 1, 0.75, 0.5, 0.25, 0, 0]

    def closes(root):
        return pl.concat([pl.read_csv(p).select("Date", "Close").with_columns(t=pl.lit(p.stem))
                          for p in sorted((root / "prices").glob("*.csv"))])

    def lead(root):
        return pl.read_csv(root / "macro.csv").drop_nulls("LEAD").select("DATE", "LEAD")

    assert closes(shift).equals(closes(base))
    jump = lead(shift)["LEAD"] - lead(base)["LEAD"]
    after = (lead(base)["DATE"] >= "2024-10-01").to_numpy()
    assert np.allclose(jump.to_numpy()[~after], 0) and np.all(jump.to_numpy()[after] > 1.0)
    r = {k: closes(root).sort("t", "Date").with_columns(r=pl.col("Close").log().diff().over("t"))
         .pivot("t", index="Date", values="r").sort("Date") for k, root in (("base", base), ("flip", flip))}
    before = r["base"]["Date"] < "2024-10-01"
    assert r["flip"].filter(before).equals(r["base"].filter(before))

    def reversal(frame):  # the cross-sectional correlation of a return with the previous one
        x = frame.drop("Date").to_numpy()[1:]  # (T, N)
        x = x - x.mean(axis=1, keepdims=True)
        return float(np.nanmean([np.corrcoef(a, b)[0, 1] for a, b in zip(x[:-1], x[1:])]))

    late = r["base"]["Date"] >= "2024-10-01"
    assert reversal(r["base"].filter(late)) < -0.2 and reversal(r["flip"].filter(late)) > 0.2


def test_challenger_windows_are_the_latest_sessions_in_order():
    from forecast.monitoring.retrain import windows

    days = sessions.sessions("XNYS", dt.date(2024, 1, 2), dt.date(2024, 12, 27))
    w = windows(days, 40, 10, 20)
    assert w == dict(train_start=str(days[-70]), val_start=str(days[-30]), test_start=str(days[-20]),
                     test_end="2024-12-28")  # exclusive: the last as-of session is the 27th
    assert windows(days[:69], 40, 10, 20) is None  # too few sessions: no retrain


@pytest.mark.parametrize("quality", ["oracle", "shuffled"])
def test_one_ticker_is_scored_per_block_and_tells_an_oracle_from_a_shuffled_model(quality):
    """One ticker has no cross-section: IC per block of `block` sessions, each block dated by its first."""
    rng = np.random.default_rng(1)
    days = sessions.sessions("XNYS", dt.date(2023, 1, 3), dt.date(2023, 12, 29))[:200]  # 200 sessions
    realised_ = 0.01 * rng.standard_normal(len(days))
    forecast = realised_ + 0.01 * rng.standard_normal(len(days)) if quality == "oracle" else rng.permutation(realised_)
    frame = pl.DataFrame(dict(ticker=["SPX"] * len(days), asof=days, forecast=forecast, realised=realised_))
    scores = realised.session_scores(frame, block=20, cost_bps=5.0, horizon=1)
    assert scores.height == 10 and scores["n"].to_list() == [20] * 10
    assert scores["date"].to_list() == days[::20]
    mean_ic = scores["ic"].mean()
    assert mean_ic > 0.5 if quality == "oracle" else abs(mean_ic) < 0.15, mean_ic
