"""Hydra loads sweepers only from the `hydra_plugins` namespace (a class defined there): this registers
forecast's Optuna sweeper (forecast/tracking/optuna_sweeper.py) as `hydra/sweeper=optuna`."""
from forecast.tracking.optuna_sweeper import OptunaSweeper as _OptunaSweeper


class OptunaSweeper(_OptunaSweeper):
    """forecast.tracking.optuna_sweeper.OptunaSweeper, under the name Hydra accepts."""
