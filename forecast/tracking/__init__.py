"""Everything a run writes to and reads from MLflow: the only package that imports mlflow."""
