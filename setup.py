"""Packaging beyond pyproject.toml: the configs (conf/) and the bundled sample (data/sample) are
installed inside the package as `forecast/conf` and `forecast/sample` (see forecast/resources.py); the
Optuna sweeper is registered with Hydra from `hydra_plugins/forecast_sweeper` (Hydra's plugin namespace)."""
from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["forecast*", "data_pipelines*"]), "hydra_plugins.forecast_sweeper",
              "forecast.conf", "forecast.sample"],
    package_dir={"forecast.conf": "conf", "forecast.sample": "data/sample"},
    package_data={"forecast.conf": ["**/*.yaml"], "forecast.sample": ["**/*.parquet"]},
)
