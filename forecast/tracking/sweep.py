"""A sweep (`python -m forecast train -m ...`) is one MLflow parent run with one child run per trial.

Hydra calls this callback around the multirun, whatever the sweeper (basic grid, Optuna) or the
launcher (in-process, joblib, a cluster): the parent is created before the first trial and its id
passed to the trials through the environment; at the end the parent gets the best trial's id and
validation loss and a comparison plot, and, with `register=true`, the best model is registered.
"""
from __future__ import annotations

import os

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

PARENT_RUN_ENV = "FORECAST_PARENT_RUN"
METRIC = "val/best_loss"


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
        run = client.create_run(self.experiment_id, run_name=f"sweep-{config.hydra.job.name}",
                                tags={"forecast.role": "sweep", "forecast.sweeper": sweeper})
        self.parent = run.info.run_id
        os.environ[PARENT_RUN_ENV] = self.parent
        client.log_param(self.parent, "overrides", " ".join(config.hydra.overrides.task) or "-")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.parent is None:
            return
        client = self._client()
        children = client.search_runs([self.experiment_id], f"tags.mlflow.parentRunId = '{self.parent}'")
        scored = sorted((r for r in children if METRIC in r.data.metrics), key=lambda r: r.data.metrics[METRIC])
        client.log_metric(self.parent, "trials", len(children))
        if scored:
            best = scored[0]
            client.set_tag(self.parent, "best_run_id", best.info.run_id)
            client.log_metric(self.parent, f"best/{METRIC}", best.data.metrics[METRIC])
            client.log_figure(self.parent, comparison_plot(scored), "sweep_comparison.png")
            print(f"sweep {self.parent}: {len(children)} trials, best {best.info.run_id} "
                  f"({METRIC}={best.data.metrics[METRIC]:.6g})")
            if self.register:
                self._register(client, best)
        client.set_terminated(self.parent, "FINISHED" if scored else "FAILED")
        os.environ.pop(PARENT_RUN_ENV, None)

    def _register(self, client, best) -> None:
        from forecast.tracking.registry import promote

        uri = f"runs:/{best.info.run_id}/model"
        print(promote(self.registered_model, self.alias, best.info.run_id, uri, best.data.metrics[METRIC]))


def comparison_plot(runs):
    """Validation loss and test IC of every trial, best first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.info.run_name or r.info.run_id[:8] for r in runs]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 0.4 * len(runs) + 2))
    a.barh(names, [r.data.metrics[METRIC] for r in runs])
    a.set_xlabel(METRIC + " (chooses the best)")
    b.barh(names, [r.data.metrics.get("test/ic", float("nan")) for r in runs], color="C1")
    b.set_xlabel("test/ic (reported, never used to choose)")
    a.invert_yaxis()
    b.invert_yaxis()
    fig.tight_layout()
    return fig
