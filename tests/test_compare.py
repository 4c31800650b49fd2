"""`python -m forecast compare` on a real SQLite tracking store, filled through MLflow's own client:
a sweep parent with its trials (one failed, without a metric), an evaluate run with a fold run under
it, and runs logged before the `overrides` tag existed. The command runs in-process through the CLI
(`forecast.__main__.main`), as a user runs it."""
import polars as pl
import pytest
from hydra.core.global_hydra import GlobalHydra
from mlflow.tracking import MlflowClient

from forecast.errors import ConfigError
from forecast.tracking.compare import differing_params, list_runs, runs_table

LOSSES = [0.31, 0.12, 0.55, 0.27, None, 0.44]  # None: a failed trial, no metric
D_MODEL = [8, 16, 32, 64, 128, 256]
METRICS = ["val/best_loss", "test/mse", "test/ic"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri)
    eid = client.create_experiment("forecast", artifact_location=str(tmp / "mlruns"))
    parent = client.create_run(eid, run_name="sweep-train", tags={"forecast.role": "sweep", "command": "sweep"})
    pid = parent.info.run_id
    trials = []
    for i, (loss, d) in enumerate(zip(LOSSES, D_MODEL)):
        run = client.create_run(eid, run_name=f"trial {i}", tags={
            "mlflow.parentRunId": pid, "command": "train", "overrides": f"data.window=16 model.d_model={d} "
                                                                       f"'data.tickers=[SPX]'"})
        for key, value in {"model.d_model": d, "data.window": 16, "data.n_train": 1000 + d}.items():
            client.log_param(run.info.run_id, key, str(value))
        if loss is not None:
            client.log_metric(run.info.run_id, "val/best_loss", loss)
            client.log_metric(run.info.run_id, "test/ic", 0.01 * i)
        trials.append(run.info.run_id)
    ev = client.create_run(eid, run_name="walk_forward", tags={"command": "evaluate", "overrides": "-"})
    client.log_metric(ev.info.run_id, "test/ic", 0.5)
    fold = client.create_run(eid, run_name="fold 0 model", tags={"mlflow.parentRunId": ev.info.run_id, "fold": "0"})
    client.log_metric(fold.info.run_id, "val/best_loss", 0.01)  # would rank first, were fold runs listed
    return dict(uri=uri, client=client, eid=eid, parent=pid, trials=trials, evaluate=ev.info.run_id,
                fold=fold.info.run_id)


def _cli(capsys, monkeypatch, *args):
    from forecast.__main__ import main

    monkeypatch.setattr("sys.argv", ["forecast"])
    try:
        main(["compare", *args])
    finally:
        GlobalHydra.instance().clear()
    return capsys.readouterr()


def _best_first() -> list[int]:
    scored = sorted((i for i, v in enumerate(LOSSES) if v is not None), key=lambda i: LOSSES[i])
    return scored + [i for i, v in enumerate(LOSSES) if v is None]


def test_a_sweep_lists_every_trial_once_with_the_swept_value_best_first(store, capsys, monkeypatch):
    out = _cli(capsys, monkeypatch, f"parent={store['parent']}", f"logger.tracking_uri={store['uri']}",
               "--format", "csv")
    table = pl.read_csv(out.out.encode(), infer_schema_length=0)
    order = _best_first()
    assert table["run_id"].to_list() == [store["trials"][i] for i in order]  # the failed trial last
    assert table["model.d_model"].to_list() == [str(D_MODEL[i]) for i in order]
    assert "data.window" not in table.columns and "data.tickers" not in table.columns  # the same in every trial
    assert table["val/best_loss"][0] == str(min(v for v in LOSSES if v is not None))
    assert all(f"/runs/{r}?workflowType=machine_learning" in link for r, link in zip(table["run_id"], table["link"]))
    summary = out.err.strip().splitlines()[-1]
    assert summary == (f"runs=6 shown=6 experiment=forecast parent={store['parent']} sort=val/best_loss "
                       f"best={store['trials'][order[0]]}")


def test_an_experiment_lists_results_not_fold_runs_or_sweep_containers(store):
    found = list_runs(store["client"], store["eid"], None, None)
    ids = {r.info.run_id for r in found}
    assert ids == {*store["trials"], store["evaluate"]}
    table = runs_table(found, "val/best_loss", "auto", 20, METRICS, None, store["uri"])
    assert set(table["run_id"][-2:]) == {store["evaluate"], store["trials"][4]}  # unscored last
    assert table["val/best_loss"][-2:].to_list() == [None, None]
    assert "parent" in table.columns  # trials and the evaluate run have different parents
    assert table.filter(pl.col("run_id") == store["evaluate"])["model.d_model"][0] is None


@pytest.mark.parametrize("sort,order", [("val/best_loss", "auto"), ("test/ic", "auto"), ("test/ic", "asc"),
                                        ("val/best_loss", "desc")])
def test_the_order_is_monotone_and_top_keeps_the_best(store, sort, order):
    found = list_runs(store["client"], store["eid"], store["parent"], None)
    full = runs_table(found, sort, order, 100, METRICS, None, store["uri"])
    values = [v for v in full[sort].to_list() if v is not None]
    descending = order == "desc" or (order == "auto" and sort == "test/ic")
    assert values == sorted(values, reverse=descending) and len(values) == 5
    assert full[sort].to_list()[len(values):] == [None] * (full.height - len(values))  # missing ones last
    for top in range(1, full.height + 1):
        assert runs_table(found, sort, order, top, METRICS, None, store["uri"])["run_id"].to_list() == \
            full["run_id"].to_list()[:top]


def test_a_filter_narrows_the_runs_and_explicit_params_are_shown(store, capsys, monkeypatch):
    out = _cli(capsys, monkeypatch, f"logger.tracking_uri={store['uri']}", "--filter", "tags.command = 'train'",
               "params=[model.d_model,data.window]", "top=3")
    lines = out.out.strip().splitlines()
    assert lines[-1].startswith("runs=6 shown=3 experiment=forecast parent=- sort=val/best_loss best=")
    header = lines[1]
    assert "model.d_model" in header and "data.window" in header and "walk_forward" not in out.out
    assert sum(store["trials"][i] in out.out for i in _best_first()[:3]) == 3


def test_markdown_is_a_table_with_links(store, capsys, monkeypatch):
    out = _cli(capsys, monkeypatch, f"parent={store['parent']}", f"logger.tracking_uri={store['uri']}",
               "--format=markdown")
    lines = out.out.strip().splitlines()
    assert lines[0].startswith("| # ") and set(lines[1]) <= {"|", "-"} and len(lines) == 2 + len(LOSSES)
    assert all("[open](http://127.0.0.1:5000/#/experiments/" in line for line in lines[2:])


@pytest.mark.parametrize("args,key", [
    (["experiment=nope"], "experiment"),
    (["sort=test/nope"], "sort"),
    (["--filter=tags.command ==== 'x'"], "filter"),
    (["parent=0123456789abcdef0123456789abcdef"], "parent"),
])
def test_a_wrong_reference_is_one_error_line(store, capsys, monkeypatch, args, key):
    with pytest.raises(SystemExit) as exit_:
        _cli(capsys, monkeypatch, f"logger.tracking_uri={store['uri']}", *args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"error: {key}: ")


def test_runs_without_their_overrides_fall_back_to_the_params_that_differ(store):
    client = store["client"]
    eid = client.create_experiment("old")
    ids = []
    for d, extra in [(8, {}), (16, {}), (16, {"trainer.limit_train_batches": "4"})]:
        run = client.create_run(eid, tags={"command": "train"})
        for k, v in {"model.d_model": str(d), "data.window": "64", "data.n_train": str(d), **extra}.items():
            client.log_param(run.info.run_id, k, v)
        ids.append(run.info.run_id)
    found = [client.get_run(i) for i in ids]
    assert differing_params(found) == ["model.d_model", "trainer.limit_train_batches"]  # data.n_train: derived
    with pytest.raises(ConfigError, match="no listed run has the metric 'val/best_loss'"):
        runs_table(found, "val/best_loss", "auto", 20, METRICS, None, store["uri"])
    for i, run_id in enumerate(ids):
        client.log_metric(run_id, "val/best_loss", 1.0 - i)
    table = runs_table([client.get_run(i) for i in ids], "val/best_loss", "auto", 20, METRICS, None, store["uri"])
    assert table["run_id"].to_list() == ids[::-1]
    assert table["trainer.limit_train_batches"].to_list() == ["4", None, None]
