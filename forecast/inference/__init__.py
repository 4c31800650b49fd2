"""Daily predictions from a registered model: `predict` (the as-of session's forecasts into a SQL
table, catch-up exactly once) and `schedule` (runs it after each close of the model's exchange).

features.py rebuilds a model's inputs from its stored state, predictions.py owns the table,
sessions.py the exchange calendar, predict.py the command, schedule.py the scheduler and bench.py
the speed benchmark. MLflow is reached only through forecast.tracking.
"""
