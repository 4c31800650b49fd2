"""Market data for the models: the store -> causal features and modality inputs -> windows split by date."""
