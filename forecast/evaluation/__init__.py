"""Scores, naive baselines, walk-forward folds, backtests and significance tests."""
