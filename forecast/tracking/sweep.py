"""A sweep (`python -m forecast train -m ...`) is one MLflow parent run with one child run per trial.

Hydra calls this callback around the multirun, whatever the sweeper (basic grid, Optuna) or the
launcher (in-process, joblib, a cluster): the parent is created before the first trial and its id
passed to the trials through the environment; at the end the parent gets the best trial's id and
validation loss and a comparison plot, and, with `register=true`, the best model is registered.
A trial's run left RUNNING (its process died, or the server was down when it ended) is marked FAILED
then, so no run of a sweep stays RUNNING for ever.
"""
from __future__ import annotations

import os

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

PARENT_RUN_ENV = "FORECAST_PARENT_RUN"
METRIC = "val/best_loss"
# "<study>/<trial number>" in the process of an Optuna trial (forecast/tracking/optuna_sweeper.py sets it
# per trial through Hydra's env_set): the trial's MLflow run is tagged with both.
TRIAL_ENV = "FORECAST_TRIAL"
UNFINISHED = "the trial ended without closing its run (its process died, or the tracking server was unreachable)"


def trial_tags() -> dict[str, str]:
    """`forecast.study` and `forecast.trial` of an Optuna trial's run; {} outside a trial."""
    study, sep, number = os.environ.get(TRIAL_ENV, "").rpartition("/")
    return {"forecast.study": study, "forecast.trial": number} if sep else {}


class MLflowSweep(Callback):
    def __init__(self, tracking_uri: str, experiment_name: str, register: bool = False,
                 registered_model: str = "forecast", alias: str = "champion"):
        self.uri, self.experiment_name = tracking_uri, experiment_name
        self.register, self.registered_model, self.alias = register, registered_model, alias
        self.parent = None

    def _client(self):
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(self.uri)
        self.experiment_id = mlflow.set_experiment(self.experiment_name).experiment_id
        return MlflowClient(self.uri)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        client = self._client()
        sweeper = config.hydra.sweeper.get("_target_", "basic").rsplit(".", 1)[-1]
        command = os.environ.get("FORECAST_COMMAND", config.hydra.job.name)  # set by forecast/__main__.py
        run = client.create_run(self.experiment_id, run_name=f"sweep {command}",
                                tags={"forecast.role": "sweep", "forecast.sweeper": sweeper, "command": "sweep"})
        self.parent = run.info.run_id
        os.environ[PARENT_RUN_ENV] = self.parent
        if config.hydra.sweeper.get("study_name"):  # forecast's Optuna sweeper: the study it adds to
            client.set_tag(self.parent, "forecast.study", config.hydra.sweeper.study_name)
        client.log_param(self.parent, "overrides", " ".join(config.hydra.overrides.task) or "-")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.parent is None:
            return
        client = self._client()
        children = client.search_runs([self.experiment_id], f"tags.mlflow.parentRunId = '{self.parent}'")
        for child in children:  # every trial has ended: a run still RUNNING would never finish
            if child.info.status == "RUNNING":
                client.set_tag(child.info.run_id, "forecast.failure", UNFINISHED)
                client.set_terminated(child.info.run_id, "FAILED")
        scored = sorted((r for r in children if METRIC in r.data.metrics), key=lambda r: r.data.metrics[METRIC])
        client.log_metric(self.parent, "trials", len(children))
        if scored:
            best = scored[0]
            client.set_tag(self.parent, "best_run_id", best.info.run_id)
            client.log_metric(self.parent, f"best/{METRIC}", best.data.metrics[METRIC])
            client.log_figure(self.parent, comparison_plot(scored), "sweep_comparison.png")
            describe_sweep(self.parent, children, config, self.uri)
            print(f"sweep {self.parent}: {len(children)} trials, best {best.info.run_id} "
                  f"({METRIC}={best.data.metrics[METRIC]:.6g})")
            if self.register:
                self._register(client, best)
        client.set_terminated(self.parent, "FINISHED" if scored else "FAILED")
        os.environ.pop(PARENT_RUN_ENV, None)

    def _register(self, client, best) -> None:
        from forecast.tracking.registry import promote

        uri = best.data.tags.get("forecast.pyfunc_uri", f"runs:/{best.info.run_id}/model")
        print(promote(self.registered_model, self.alias, best.info.run_id, uri, best.data.metrics[METRIC]))


def fail_stale_runs(tracking_uri: str, experiment_name: str, study: str, numbers: list[int]) -> int:
    """The RUNNING runs of trials `numbers` of `study` (their sweep died: Optuna found them stale) marked
    FAILED, and their parent sweeps too once no child of theirs still runs; returns how many trial runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return 0
    ids = [experiment.experiment_id]
    stale = [r for r in client.search_runs(ids, f"tags.forecast.study = '{study}' and attributes.status = 'RUNNING'")
             if r.data.tags.get("forecast.trial") in {str(n) for n in numbers}]
    for run in stale:
        client.set_tag(run.info.run_id, "forecast.failure", "stale: its sweep stopped beating (it died)")
        client.set_terminated(run.info.run_id, "FAILED")
    for parent in {r.data.tags.get("mlflow.parentRunId") for r in stale} - {None}:
        running = client.search_runs(ids, f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'RUNNING'")
        if not running and client.get_run(parent).info.status == "RUNNING":
            client.set_terminated(parent, "FAILED")
    return len(stale)


def describe_sweep(parent: str, children: list, config: DictConfig, tracking_uri: str) -> None:
    """The parent's description: the best trial, then every trial best first with the swept values
    (the table of `python -m forecast compare parent=<parent>`, its metrics from conf/compare.yaml)."""
    from omegaconf import OmegaConf

    from forecast.resources import conf_dir
    from forecast.tracking.compare import render, runs_table
    from forecast.tracking.review import describe

    metrics = list(OmegaConf.load(conf_dir() / "compare.yaml").metrics)
    table = runs_table(children, METRIC, "asc", len(children), metrics, None, tracking_uri)
    best = table.row(0, named=True)
    fixed = {"#", "run", "run_id", "command", "parent", "link", *metrics, METRIC}
    swept = ", ".join(f"`{c}`" for c in table.columns if c not in fixed) or "no config value"
    describe("\n".join([
        f"### Best trial: {best['run']} (`{best['run_id']}`), {METRIC} = {best[METRIC]:.4g}",
        f"{len(children)} trials over {swept} ({config.hydra.sweeper.get('_target_', 'basic').rsplit('.', 1)[-1]}), "
        f"ranked by {METRIC}: the validation split chooses, the test split never does.", "",
        render(table, "markdown"), "",
        f"In a terminal: `python -m forecast compare parent={parent}`. Plot: `sweep_comparison.png`.",
    ]), run_id=parent)


def comparison_plot(runs):
    """Validation loss and test IC of every trial, best first."""
    from forecast.evaluation.plots import color, plt  # the one figure style of every command

    names = [r.info.run_name or r.info.run_id[:8] for r in runs]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 0.4 * len(runs) + 2))
    a.barh(names, [r.data.metrics[METRIC] for r in runs], color=color("model"))
    a.set_xlabel(METRIC + " (chooses the best)")
    b.barh(names, [r.data.metrics.get("test/ic", float("nan")) for r in runs], color="0.55")
    b.set_xlabel("test/ic (reported, never used to choose)")
    a.invert_yaxis()
    b.invert_yaxis()
    fig.tight_layout()
    return fig
