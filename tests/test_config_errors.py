"""Every wrong config value, of every command, is one `error: <key>: ...` line with exit code 2, found
before any data is read or any tracking store, checkpoint or data store is created; and every
config file of conf/ passes the schemas (they cannot drift apart)."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from conftest import CONF

TRAIN = [
    (["model.optimizer.lr=-1"], "model.optimizer.lr"),
    (["model.optimizer.weight_decay=-0.5"], "model.optimizer.weight_decay"),
    (["data.val_start=not-a-date"], "data.val_start"),
    (["seed=abc"], "seed"),
    (["init_from=0123456789abcdef"], "init_from"),
    (["resume=0123456789abcdef"], "resume"),
    (["model.backbone.n_layers=0"], "model.backbone.n_layers"),
    (["data.window=1"], "data.window"),
    (["data.window=abc"], "data.window"),
    (["data.horizon=0"], "data.horizon"),
    (["data.horizon=2", "data.purge=1"], "data.purge"),
    (["data.label=zscore"], "data.label"),
    (["data.val_frac=0.6", "data.test_frac=0.5"], "data.val_frac"),
    (["data.batch_size=0"], "data.batch_size"),
    (["data.tickers=[]"], "data.tickers"),
    (["data.tickers=[SPX,NOPE]"], "data.tickers"),
    (["data.tickers=[SPX,SPX]"], "data.tickers"),
    (["data.store=no/such/store"], "data.store"),
    (["data.val_start=2011-01-01", "data.test_start=2009-01-01"], "data.val_start"),
    (["data.exog_level_window=2"], "data.exog_level_window"),
    (["+data.windw=32"], "data.windw"),
    (["modalities=[]"], "modalities"),
    (["modalities=[price,nope]"], "modalities"),
    (["modalities=[price,news]"], "modalities"),  # the sample store has no headlines
    (["model/backbone=nope"], "model/backbone"),
    (["model.d_model=0"], "model.d_model"),
    (["model.backbone.dropout=1.5"], "model.backbone.dropout"),
    (["model.backbone.impl=gpu"], "model.backbone.impl"),
    (["model/backbone=transformer", "model.backbone.n_heads=3"], "model.backbone.n_heads"),
    (["model/backbone=mamba2", "model.d_model=16"], "model.backbone.headdim"),
    (["model/backbone=linear_attention", "model.backbone.decay=sometimes"], "model.backbone.decay"),
    (["model.head.dropout=-0.1"], "model.head.dropout"),
    (["model/head=factor", "model.head.n_factors=0"], "model.head.n_factors"),
    (["model.fusion.modality_dropout=1"], "model.fusion.modality_dropout"),
    (["model.encoders.price.dropout=2"], "model.encoders.price.dropout"),
    (["trainer.max_epochs=0"], "trainer.max_epochs"),
    (["trainer.accelerator=tpu"], "trainer.accelerator"),
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val"),
    (["callbacks.early_stopping.patience=-1"], "callbacks.early_stopping.patience"),
    (["callbacks.checkpoint.mode=best"], "callbacks.checkpoint.mode"),
    (["logger.tracking_uri=mlflow.db"], "logger.tracking_uri"),
    (["logger.tracking_uri=http://127.0.0.1:9"], "logger.tracking_uri"),  # nothing listens there
    (["logger.experiment_name="], "logger.experiment_name"),
    (["baselines=[zero,nope]"], "baselines"),
    (["freeze=[wheels]"], "freeze"),
    (["register=maybe"], "register"),
    (["registry.alias=bad alias"], "registry.alias"),
    (["-m", "model.d_model=16,30", "model/backbone=transformer"], "model.backbone.n_heads"),  # 2nd value
]
EVALUATE = [
    (["evaluate.strategy=long"], "evaluate.strategy"),
    (["evaluate.retrain_every=0"], "evaluate.retrain_every"),
    (["evaluate.backbones=[gru]"], "evaluate.backbones"),
    (["evaluate.baselines=[oracle]"], "evaluate.baselines"),
    (["evaluate.n_boot=5"], "evaluate.n_boot"),
    (["evaluate.ci=1.5"], "evaluate.ci"),
    (["evaluate.workers=0"], "evaluate.workers"),
    (["evaluate.start=soon"], "evaluate.start"),
]
INGEST = [
    (["mode=append"], "mode"),
    (["exchange=NOPE"], "exchange"),
    (["ticker_pattern='('"], "ticker_pattern"),
    (["ticker_pattern=("], "ticker_pattern"),  # not even an override Hydra can parse
    (["ticker_pattern=abc"], "ticker_pattern"),
    (["max_price=-1"], "max_price"),
    (["news.timezone=Mars/Base"], "news.timezone"),
    (["wait=perhaps"], "wait"),
    (["path=no/such/folder"], "path"),
]
SYNTH = [
    (["tickers=0"], "tickers"),
    (["layout=csv"], "layout"),
    (["end=yesterday"], "end"),
    (["news_rate=2"], "news_rate"),
    (["exchange=NOPE"], "exchange"),
    (["strength.news=-1"], "strength.news"),
]
BENCH = [
    (["backbones", "lengths=[]"], "lengths"),
    (["backbones", "d_model=0"], "d_model"),
    (["ingest", "variants=[spark]"], "variants"),
    (["ingest", "dirty=2"], "dirty"),
]
QUALITY = [  # forecast quality (issue 19): calibration and the quantile head
    (["calibrate=isotonic"], "calibrate"),
    (["quantile_adapt=-0.1"], "quantile_adapt"),
    (["quantile_adapt=2"], "quantile_adapt"),
    (["model/head=quantile", "model.head.quantiles=[0.1,0.9]"], "model.head.quantiles"),
    (["model/head=quantile", "model.head.quantiles=[0.5,1.5]"], "model.head.quantiles"),
    (["model/head=quantile", "model.head.quantiles=[0.1,0.5,0.5]"], "model.head.quantiles"),
]
COMPARE = [  # reviewing runs (issue 22): `compare`; references to runs are checked in tests/test_compare.py
    (["order=up"], "order"),
    (["top=0"], "top"),
    (["--format", "html"], "format"),
    (["parent=abc"], "parent"),
    (["logger.tracking_uri=sqlite:///nowhere.db"], "logger.tracking_uri"),  # no store there: none is created
]
PREDICT = [  # daily predictions: the model, store and database are checked in tests/test_predict.py
    (["model=http://x"], "model"),
    (["date=someday"], "date"),
    (["predictions.url=nowhere"], "predictions.url"),
    (["batch_size=0"], "batch_size"),
    (["since=soon", "catch_up=true"], "since"),
]
SCHEDULE = [(["schedule.delay=soonish"], "schedule.delay"), (["schedule.max_runs=0"], "schedule.max_runs")]
SCALE = [  # data scale (issue 21): `bench catalogue` and `bench wide`
    (["catalogue", "files=5"], "files"),
    (["catalogue", "variants=[reingest]"], "variants"),
    (["catalogue", "changed=0"], "changed"),
    (["wide", "tickers=0"], "tickers"),
    (["wide", "window=1000", "sessions=2000"], "window"),
    (["wide", "batch_size=-1"], "batch_size"),
]
COMPRESS = [
    (["device=nope"], "device"),  # lists the profiles
    (["model=0123456789abcdef"], "model"),  # no such run
    (["budget.speedup=-1"], "budget.speedup"),
    (["search.students=[{width: 1}]"], "search.students[0].width"),
    (["search.students=[{backbone: gru}]"], "search.students[0].backbone"),
    (["device.threads=0"], "device.threads"),
    (["latency.repeats=1"], "latency.repeats"),
]
SERVER = [
    (["port=70000"], "port"),
    (["backend=mysql"], "backend"),
    (["host=0.0.0.0"], "host"),  # not loopback, and no expose=true
    (["workers=0"], "workers"),
    (["port=5000", "db_port=5000"], "db_port"),
    (["startup_timeout=0"], "startup_timeout"),
]
CASES = ([("predict", *c) for c in PREDICT] + [("schedule", *c) for c in SCHEDULE]
         + [("compare", *c) for c in COMPARE] + [("evaluate", *c) for c in QUALITY] + [("train", *c) for c in TRAIN]
         + [("evaluate", *c) for c in EVALUATE] + [("ingest", *c) for c in INGEST]
         + [("synth", *c) for c in SYNTH] + [("bench", *c) for c in BENCH] + [("bench", *c) for c in SCALE]
         + [("compress", *c) for c in COMPRESS] + [("server", *c) for c in SERVER])


@pytest.mark.parametrize("command,args,key", CASES, ids=[f"{c}:{' '.join(a)}" for c, a, _ in CASES])
def test_a_wrong_value_is_one_error_line_naming_its_key(command, args, key, tmp_path, monkeypatch, capsys):
    from hydra.core.global_hydra import GlobalHydra

    from forecast.__main__ import main

    monkeypatch.chdir(tmp_path)  # whatever a run would write lands here
    monkeypatch.setattr("sys.argv", ["forecast"])
    where = {"ingest": [f"store={tmp_path}/store", f"path={Path(CONF).parent}/data/sample/prices"],
             "synth": [f"out={tmp_path}/synth"], "bench": [f"out={tmp_path}/bench.json"]}.get(command, [])
    with pytest.raises(SystemExit) as exit_:
        main([command, *args[:1], *where, *args[1:]] if command == "bench" else [command, *where, *args])
    GlobalHydra.instance().clear()
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: {key}"), last
    written = sorted(p.name for p in tmp_path.iterdir() if p.name != "outputs")  # Hydra's run folder only
    assert written == [], f"a user error wrote {written}"


def test_there_are_at_least_forty_cases_covering_every_command_and_group():
    assert len(CASES) >= 40
    keys = {key.split(".")[0].split("/")[0] for _, _, key in CASES}
    assert {"data", "model", "trainer", "callbacks", "logger", "evaluate"} <= keys


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml"))


OPTIONS = [f"{group}={o}" for group in ["model/backbone", "model/head", "model/fusion", "model/optimizer", "trainer",
                                        "experiment", "hparams_search"] for o in _options(group)]


@pytest.mark.parametrize("option", OPTIONS)
def test_every_config_option_passes_the_schemas(option, tmp_path):
    """The YAML defaults and the schemas agree: no key the schema does not know, no default it rejects."""
    from forecast.config import check

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[option])
    if not (Path(cfg.data.store) / "manifest.parquet").exists():
        cfg.data.store = str(Path(CONF).parent / "data" / "sample")  # a runner builds that store
    check("train", cfg)


@pytest.mark.parametrize("command,config", [("evaluate", "evaluate"), ("ingest", "ingest"), ("synth", "synth"),
                                            ("bench backbones", "bench_backbones"), ("bench ingest", "bench_ingest"),
                                            ("bench catalogue", "bench_catalogue"), ("bench wide", "bench_wide")])
def test_every_command_config_passes_the_schemas(command, config):
    from forecast.config import check

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        check(command, compose(config))
