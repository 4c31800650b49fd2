"""Reviewing runs in the MLflow UI, checked in a real browser: a real store with a tiny sweep (two
train trials and their parent) and a tiny two-fold evaluate run, a real `mlflow ui` on a free
loopback port, and Debian's headless Chromium rendering the run pages. The rendered pages must show
the description's verdict, the tags and the plots' names, in MLflow's model-training view.

Screenshots go to $FORECAST_REVIEW_SHOTS when set (experiments/review/ holds the committed ones and
the command), else to a temporary folder. The browser tests skip when no Chromium is installed.
"""
import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from urllib.parse import quote

import numpy as np
import polars as pl
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from conftest import CONF, ROOT, TINY
from forecast.evaluation.backtest import max_drawdown
from forecast.evaluation.description import point_verdict
from forecast.evaluation.plots import wealth_and_drawdown
from forecast.tracking import review
from forecast.tracking.runs import footer

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (.ci/run installs Debian's)")
ENV = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHONHASHSEED="0")
PLOTS = ["cumulative_return.png", "fold_metrics.png", "pred_vs_realised.png", "rolling_ic.png"]
SWEEP = [*TINY, "trainer.max_epochs=1", "model.d_model=8,16"]
EVALUATE = [*TINY, "trainer.max_epochs=1", "evaluate.retrain_every=380", "evaluate.n_boot=50", "evaluate.workers=1",
            "evaluate.baselines=[zero,ridge]", "evaluate.backbones=[]"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, seconds: float = 150) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow ui exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"no answer at {url} after {seconds} s")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with one sweep (2 train trials) and one evaluate run, served by `mlflow ui` (started
    first: it takes half a minute to answer on 2 cores)."""
    tmp = tmp_path_factory.mktemp("review")
    uri = f"sqlite:///{tmp}/mlflow.db"
    data = [f"data.store={tmp}/sample"]  # a copy: the pages and screenshots name no path of this checkout
    shutil.copytree(ROOT / "data" / "sample", tmp / "sample")
    MlflowClient(uri).create_experiment("forecast", artifact_location=str(tmp / "mlruns"))  # the schema too
    port = _free_port()
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                           "--port", str(port)], cwd=tmp, env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        sweep = subprocess.run([sys.executable, "-m", "forecast", "train", "-m", *SWEEP, *data,
                                f"logger.tracking_uri={uri}",
                                f"trainer.default_root_dir={tmp}/ckpt", f"hydra.sweep.dir={tmp}/multirun"],
                               cwd=tmp, env=dict(ENV, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                               timeout=600)
        assert sweep.returncode == 0, (sweep.stdout + sweep.stderr)[-3000:]
        evaluate_run = _evaluate(uri, tmp, data)
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("forecast")
        runs = client.search_runs([experiment.experiment_id])
        parent = next(r for r in runs if r.data.tags.get("forecast.role") == "sweep")
        trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        report = Path(client.download_artifacts(evaluate_run, "report.txt", str(tmp))).read_text()
        _wait_for(f"http://127.0.0.1:{port}/health", ui)
        yield dict(uri=uri, base=f"http://127.0.0.1:{port}", client=client, experiment=experiment.experiment_id,
                   parent=parent, trials=trials, evaluate=client.get_run(evaluate_run), report=report, tmp=tmp)
    finally:
        os.killpg(ui.pid, signal.SIGTERM)  # the server and its workers: the process group it leads
        try:
            ui.wait(timeout=5)
        except subprocess.TimeoutExpired:  # uvicorn waits for idle browser connections: no need here
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait(timeout=10)


def _evaluate(uri: str, tmp: Path, data: list[str]) -> str:
    from forecast.evaluation.evaluate import evaluate

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("evaluate", overrides=[*EVALUATE, *data, f"logger.tracking_uri={uri}",
                                             f"trainer.default_root_dir={tmp}/ckpt"])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)  # whatever the run writes beside the store lands here
        evaluate(cfg)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("forecast").experiment_id],
                              "tags.command = 'evaluate'")
    return runs[0].info.run_id


def _page(store: dict, route: str, shot: str | None = None, view: bool = True, query: dict | None = None) -> str:
    """The page's DOM after Chromium ran its scripts (and a screenshot of it), text only."""
    params = "&".join([*([review.VIEW] if view else []), urllib.parse.urlencode(query or {}, quote_via=quote)])
    url = f"{store['base']}/#/experiments/{store['experiment']}/{route}?{params.strip('&')}"
    profile = store["tmp"] / f"chromium-{time.monotonic_ns()}"  # fresh: no view remembered from before
    shots = Path(os.environ.get("FORECAST_REVIEW_SHOTS") or store["tmp"])
    shots.mkdir(parents=True, exist_ok=True)
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
            f"--user-data-dir={profile}", "--window-size=1800,1300", "--virtual-time-budget=15000", "--dump-dom",
            *([f"--screenshot={shots / shot}"] if shot else []), url]
    dom = subprocess.run(args, capture_output=True, text=True, timeout=120, env=ENV).stdout
    assert "<div" in dom, "Chromium rendered nothing"
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))


# --- what is written to the runs (no browser) -------------------------------------------------------------

def test_every_run_has_a_description_with_its_verdict_and_table(store):
    for trial in store["trials"]:
        note = trial.data.tags[review.DESCRIPTION]
        assert note.startswith("### Verdict") and "| **model**" in note and "| ridge" in note
        assert f"{trial.data.metrics['val/best_loss']:.4g}" in note  # the validation loss that chose it
    note = store["evaluate"].data.tags[review.DESCRIPTION]
    verdicts = [line.removeprefix("verdict: ") for line in store["report"].splitlines() if line.startswith("verdict")]
    assert verdicts and all(f"- {v}" in note for v in verdicts)  # the printed verdict, word for word
    assert "### Walk-forward: 2 folds" in note and "ic 95% CI" in note


def test_runs_are_tagged_for_filtering_and_named_by_what_they_are(store):
    client = store["client"]
    for run in [*store["trials"], store["evaluate"]]:
        tags = run.data.tags
        assert tags["backbone"] == "mamba" and tags["tickers"] == "SPX" and tags["n_tickers"] == "1"
        assert tags["modalities"] == "price" and tags["horizon"] == "1" and tags["label"] == "raw"
        assert re.fullmatch(r"[0-9a-f]{12}", tags["data_hash"]) and tags["store"] == str(store["tmp"] / "sample")
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|forecast==.+|unknown", tags["code_version"])
    assert len({r.data.tags["data_hash"] for r in [*store["trials"], store["evaluate"]]}) == 1  # same data
    assert sorted(r.info.run_name for r in store["trials"]) == ["trial 0: train mamba SPX", "trial 1: train mamba SPX"]
    found = client.search_runs([store["experiment"]], "tags.backbone = 'mamba' and tags.command = 'train'")
    assert {r.info.run_id for r in found} == {r.info.run_id for r in store["trials"]}
    assert client.get_experiment(store["experiment"]).tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_sweep_parent_describes_every_trial_best_first(store):
    note = store["parent"].data.tags[review.DESCRIPTION]
    best = store["parent"].data.tags["best_run_id"]
    assert "### Best trial: trial " in note and f"`{best}`" in note
    order = sorted(store["trials"], key=lambda r: r.data.metrics["val/best_loss"])
    positions = [note.index(f"| {r.info.run_id} ") for r in order]
    assert positions == sorted(positions) and order[0].info.run_id == best
    assert "2 trials over `model.d_model` (BasicSweeper)" in note  # the swept value, a column of the table


def test_compare_lists_the_sweeps_trials_with_the_swept_value_best_first(store, capsys, monkeypatch):
    from forecast.__main__ import main

    monkeypatch.setattr("sys.argv", ["forecast"])
    main(["compare", f"parent={store['parent'].info.run_id}", f"logger.tracking_uri={store['uri']}", "--format", "csv"])
    GlobalHydra.instance().clear()
    out = capsys.readouterr()
    table = pl.read_csv(out.out.encode(), infer_schema_length=0)
    assert table["run_id"].to_list() == [r.info.run_id for r in sorted(store["trials"],
                                                                         key=lambda r: r.data.metrics["val/best_loss"])]
    assert sorted(table["model.d_model"].to_list()) == ["16", "8"] and "data.window" not in table.columns
    assert out.err.strip().splitlines()[-1].endswith(f"best={store['parent'].data.tags['best_run_id']}")


def test_the_printed_link_opens_the_model_training_view():
    text = footer("sqlite:///mlflow.db", "3", "abc")
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db  ->  " in text
    assert "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning" in text
    assert text.splitlines()[-1] == "run_id=abc tracking_uri=sqlite:///mlflow.db"
    served = footer("http://10.0.0.5:5001/", "3", "abc")
    assert served.startswith("view: http://10.0.0.5:5001/#/experiments/3/runs/abc?") and "mlflow ui" not in served


# --- what a reviewer sees: the real UI in a real browser --------------------------------------------------

@needs_browser
def test_a_train_run_page_shows_verdict_tags_and_plots_in_the_training_view(store):
    trial = min(store["trials"], key=lambda r: r.data.metrics["val/best_loss"])
    text = _page(store, f"runs/{trial.info.run_id}", "train_overview.png")
    assert "Model training" in text and "Evaluation runs" not in text  # not the GenAI layout
    assert "Verdict" in text and re.search(r"the model (is NOT better than|beats every baseline)", text)
    for key in ["backbone", "tickers", "data_hash", "code_version"]:
        assert key in text, key
    assert trial.data.tags["data_hash"] in text
    text = _page(store, f"runs/{trial.info.run_id}/artifacts/plots/rolling_ic.png", "train_artifacts.png")
    assert "rolling_ic.png" in text and "test_predictions.png" in text


@needs_browser
def test_an_evaluate_run_page_shows_its_verdict_and_every_plot(store):
    run = store["evaluate"]
    text = _page(store, f"runs/{run.info.run_id}", "evaluate_overview.png")
    assert "Evaluation runs" not in text
    assert "Diebold-Mariano vs the random walk" in text and "Walk-forward: 2 folds" in text
    assert "evaluate" in text and run.data.tags["data_hash"] in text
    for plot in PLOTS:
        shown = _page(store, f"runs/{run.info.run_id}/artifacts/plots/{plot}", f"evaluate_{plot}")
        assert f"plots/{plot}" in shown and all(p in shown for p in PLOTS), plot  # shown, and in the file tree


@needs_browser
def test_the_sweep_parent_page_lists_its_trials(store):
    text = _page(store, f"runs/{store['parent'].info.run_id}", "sweep_overview.png")
    assert "Best trial" in text and all(r.info.run_id in text for r in store["trials"])


@needs_browser
def test_the_runs_table_filters_by_tag(store):
    search = "tags.backbone = 'mamba' and tags.command = 'evaluate'"
    text = _page(store, "runs", "runs_filtered_by_tag.png", query={"searchFilter": search})
    assert "walk_forward" in text and "sweep train" not in text and "trial 0" not in text
    text = _page(store, "runs", query={"searchFilter": "tags.command = 'train'"})
    assert "sweep train" in text and "walk_forward" not in text  # MLflow groups the trials under their sweep


@needs_browser
def test_without_the_link_parameter_mlflow_opens_its_genai_view(store):
    """The control: MLflow 3.17 chooses its layout from the URL parameter (else the browser's last
    choice, else GenAI), not from the experiment: the same page without it is the GenAI layout."""
    text = _page(store, f"runs/{store['evaluate'].info.run_id}", view=False)
    assert "Evaluation runs" in text


# --- properties of the pieces -----------------------------------------------------------------------------

@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-0.2, 0.2), min_size=1, max_size=300))
def test_the_drawdown_panel_reaches_exactly_the_reported_max_drawdown(returns):
    net = np.array(returns)
    wealth, drawdown = wealth_and_drawdown(net)
    assert np.all(drawdown <= 1e-12) and np.isclose(drawdown.min(initial=0.0), max_drawdown(net))
    assert np.allclose(wealth, np.cumprod(1 + net))


METRIC = st.floats(0.01, 1.0)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["zero", "ridge", "lgbm"]),
                       st.fixed_dictionaries({"mse": METRIC, "ic": METRIC, "dir_acc": METRIC}), min_size=1),
       st.fixed_dictionaries({"mse": METRIC, "ic": METRIC, "dir_acc": METRIC}))
def test_the_train_verdict_names_every_baseline_the_model_does_not_beat(baselines, model):
    lines = point_verdict({"model": model, **baselines})
    for name, b in baselines.items():
        beaten = model["mse"] < b["mse"] and model["ic"] > b["ic"] and model["dir_acc"] > b["dir_acc"]
        assert any(f"NOT better than '{name}'" in line for line in lines) == (not beaten)
    all_beaten = not any("NOT better" in line for line in lines)
    assert any("beats every baseline" in line for line in lines) == all_beaten


def test_the_data_hash_follows_the_data_a_run_reads():
    from forecast.resources import sample_store

    store = sample_store()
    one, again = review.data_hash(store, ["SPX"], ["price"]), review.data_hash(store, ["SPX"], ["price"])
    assert one == again and one != review.data_hash(store, ["GOOG", "SPX"], ["price"])
    assert one != review.data_hash(store, ["SPX"], ["price", "exogenous"])  # reads the macro table too
    assert one == review.data_hash(store, ["SPX"], ["price", "calendar"])  # the calendar is not data


def test_a_markdown_table_shows_missing_values_as_dashes():
    text = review.markdown_table(pl.DataFrame({"name": ["a", "b"], "x": [1.234567, float("nan")], "y": [None, 2.0]}))
    lines = text.splitlines()
    assert len(lines) == 4 and lines[0].split("|")[1].strip() == "name" and set(lines[1]) <= {"|", "-"}
    assert "1.235" in lines[2] and lines[3].count(" - ") == 1 and "2" in lines[3]
