"""The Lightning logger of every run (`conf/logger/mlflow.yaml` builds it with `_target_`).

Lightning's MLFlowLogger, logging each (metric, step) once. Lightning logs an epoch's metrics before
it writes that epoch's checkpoint, so a run killed in between re-runs the epoch on resume; its values
(the same, as training is deterministic) are not logged a second time. A tracking server instead of
the SQLite file is `logger.tracking_uri=http://host:port`: a config value, not code.
"""
from __future__ import annotations

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only


class RunLogger(MLFlowLogger):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._seen: set[tuple[str, int]] | None = None

    @rank_zero_only
    def log_metrics(self, metrics, step: int | None = None) -> None:
        if self._seen is None:
            client = self.experiment
            keys = client.get_run(self.run_id).data.metrics
            self._seen = {(k, m.step) for k in keys for m in client.get_metric_history(self.run_id, k)}
        fresh = {k: v for k, v in metrics.items() if (k, step or 0) not in self._seen}
        self._seen |= {(k, step or 0) for k in fresh}
        if fresh:
            super().log_metrics(fresh, step)
