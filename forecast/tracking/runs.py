"""What a run writes to MLflow and reads back from it: the tracking store and experiment, the run
itself (a child of a sweep or of a walk-forward evaluation when it is one), its resolved config and
params, metrics, figures, tables, the model, and, to resume, its logged config and last checkpoint.
"""
from __future__ import annotations

import contextlib
import math
import os
import tempfile
from importlib import metadata
from pathlib import Path

import mlflow
import polars as pl
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from packaging.requirements import Requirement

from forecast.errors import ConfigError, UserError
from forecast.tracking.review import run_url, tag_experiment, ui_base
from forecast.training.checkpoint import checkpoint_dir


def flatten(d, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, f"{key}.") if isinstance(v, dict) else {key: str(v)})
    return out


def connect(logger: DictConfig) -> str:
    """Point MLflow at `logger.tracking_uri` and its experiment (tagged for the model-training view,
    forecast/tracking/review.py); returns the experiment id."""
    mlflow.set_tracking_uri(logger.tracking_uri)
    experiment_id = mlflow.set_experiment(logger.experiment_name).experiment_id
    tag_experiment(experiment_id)
    return experiment_id


@contextlib.contextmanager
def open_run(run_name: str | None = None, run_id: str | None = None, parent: str | None = None,
             tags: dict | None = None):
    """A new run (or `run_id` continued), a child of `parent` when given; yields its id."""
    nested = parent is not None and mlflow.active_run() is not None
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name,
                          parent_run_id=None if run_id else parent, nested=nested, tags=tags) as run:
        yield run.info.run_id


def log_config(cfg: DictConfig, params: dict | None = None) -> None:
    """The resolved config as `config.yaml` and as flattened params, plus `params`."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    mlflow.log_text(OmegaConf.to_yaml(resolved), "config.yaml")
    mlflow.log_params(dict(flatten(resolved), **(params or {})))


def log_params(params: dict) -> None:
    mlflow.log_params(params)


def set_tags(tags: dict) -> None:
    mlflow.set_tags(tags)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """The finite ones (an IC of a constant forecast is nan: not logged)."""
    mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)}, step=step)


def log_text(text: str, path: str) -> None:
    mlflow.log_text(text, path)


def log_file(local: str | Path, folder: str | None = None) -> None:
    """A local file as an artifact of the active run, under `folder`."""
    mlflow.log_artifact(str(local), folder)


def log_figure(figure, path: str) -> None:
    mlflow.log_figure(figure, path)


def log_tables(tables: dict[str, pl.DataFrame]) -> None:
    """{artifact path: frame}; `.parquet` or `.csv` by the path's suffix."""
    with tempfile.TemporaryDirectory() as tmp:
        for path, frame in tables.items():
            local = Path(tmp) / Path(path).name
            frame.write_parquet(local) if local.suffix == ".parquet" else frame.write_csv(local)
            folder = str(Path(path).parent)
            mlflow.log_artifact(str(local), None if folder == "." else folder)


def load_table(tracking_uri: str, run_id: str, path: str) -> pl.DataFrame:
    """A table a run logged with `log_tables` (`.parquet` or `.csv` by the path's suffix)."""
    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp)
        return pl.read_parquet(local) if path.endswith(".parquet") else pl.read_csv(local)


def log_model(model, input_example) -> str:
    """The model as the run's `model` artifact; returns its URI."""
    info = mlflow.pytorch.log_model(model.cpu().eval(), name="model", input_example=input_example,
                                    serialization_format="pickle", pip_requirements=requirements())
    return info.model_uri


def requirements() -> list[str]:
    """The project's dependencies pinned at their installed versions: what loading the model needs
    besides this package. Given explicitly, MLflow skips inferring them (a ~15 s subprocess)."""
    reqs = [Requirement(r) for r in metadata.requires("forecast") or []]
    return [f"{r.name}=={metadata.version(r.name).split('+')[0]}" for r in reqs if r.marker is None]


def model_uri(source: str) -> str:
    """`<run id>` -> `runs:/<run id>/model`; `models:/<name>@<alias>` or `models:/<name>/<version>` ->
    the `model` artifact of the version's run (a registered version is the pyfunc, forecast/tracking/
    serving.py; the torch module sits beside it); other URIs as given."""
    if source.startswith("models:/"):
        name, sep, alias = source.removeprefix("models:/").partition("@")
        name, _, version = name.partition("/")
        client = MlflowClient()
        mv = client.get_model_version_by_alias(name, alias) if sep else client.get_model_version(name, version)
        return f"runs:/{mv.run_id}/model"
    return source if "://" in source else f"runs:/{source}/model"


def load_model(source: str):
    """The logged torch model of a run id or model URI, on the CPU."""
    return mlflow.pytorch.load_model(model_uri(source), map_location="cpu")


def check_reachable(tracking_uri: str, key: str) -> None:
    """A tracking server that answers /health within a few seconds (MLflow itself retries for minutes)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import urllib.request

    try:
        urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=5).read()
    except OSError as e:
        raise ConfigError(key, f"no MLflow server answers at {tracking_uri} ({e}); "
                               "start one with `python -m forecast server` or use sqlite:///mlflow.db") from None


def check_source(tracking_uri: str, source: str, key: str) -> None:
    """A run id, `runs:/..` or `models:/name@alias|version` that exists; never creates the store."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).exists():
        raise ConfigError(key, f"{source}: no tracking store at {tracking_uri} (nothing was logged there)")
    client = MlflowClient(tracking_uri)
    try:
        if source.startswith("models:/"):
            name, sep, alias = source.removeprefix("models:/").partition("@")
            name, _, version = name.partition("/")
            client.get_model_version_by_alias(name, alias) if sep else client.get_model_version(name, version)
        else:
            client.get_run(source.removeprefix("runs:/").split("/")[0])
    except MlflowException:
        raise ConfigError(key, f"{source} is not in {tracking_uri}; {_known_sources(client)}") from None


def _known_sources(client: MlflowClient) -> str:
    models = [f"models:/{m.name}@{a}" for m in client.search_registered_models() for a in m.aliases]
    recent = [r.info.run_id for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()], max_results=3, order_by=["attributes.start_time DESC"])]
    return f"registered: {models or 'none'}; recent runs: {recent or 'none'}"


def stored_config(run_id: str) -> DictConfig:
    """The config a run logged (`config.yaml`), to continue exactly what it started."""
    return OmegaConf.create(mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml"))


def resume_target(experiment_id: str, resume: str, root: str) -> tuple[str, Path]:
    """(run_id, last.ckpt) for `resume=<run_id>` or `resume=last` (the newest run with a checkpoint)."""
    if resume == "last":
        runs = MlflowClient().search_runs([experiment_id], order_by=["attributes.start_time DESC"], max_results=50)
        ids = [r.info.run_id for r in runs
               if (checkpoint_dir(root, experiment_id, r.info.run_id) / "last.ckpt").exists()]
        if not ids:
            raise UserError(f"resume=last: no run of this experiment has a checkpoint under {root}")
        resume = ids[0]
    ckpt = checkpoint_dir(root, experiment_id, resume) / "last.ckpt"
    if not ckpt.exists():
        raise UserError(f"resume={resume}: no checkpoint at {ckpt}")
    return resume, ckpt


def footer(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """Where to look at the run (a link that opens MLflow's model-training view), and the
    machine-readable last line of train and evaluate."""
    served = ui_base(tracking_uri) == tracking_uri.rstrip("/")  # a tracking server serves its own UI
    how = "" if served else f"mlflow ui --backend-store-uri {tracking_uri}  ->  "
    return f"view: {how}{run_url(tracking_uri, experiment_id, run_id)}\nrun_id={run_id} tracking_uri={tracking_uri}"


# --- what `predict` reads: a model reference, its run's stored state ---------------------------------

def resolve_model(tracking_uri: str, source: str, key: str = "model") -> tuple[str, str, str]:
    """(name, version, run_id) of `models:/<name>@<alias>`, `models:/<name>/<version>`, `runs:/<id>[/..]`
    or a run id: a run's latest registered version when it has one, else ("run", run id, run id).
    Checked first: an unknown reference is one line naming the registered models and their aliases."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a command prints its own lines
    check_reachable(tracking_uri, "logger.tracking_uri")
    check_source(tracking_uri, source, key)
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    if source.startswith("models:/"):
        name, sep, alias = source.removeprefix("models:/").partition("@")
        name, _, version = name.partition("/")
        mv = client.get_model_version_by_alias(name, alias) if sep else client.get_model_version(name, version)
        return mv.name, str(mv.version), mv.run_id
    run_id = source.removeprefix("runs:/").split("/")[0]
    versions = client.search_model_versions(f"run_id = '{run_id}'")
    if versions:
        mv = max(versions, key=lambda v: int(v.version))
        return mv.name, str(mv.version), run_id
    return "run", run_id, run_id


def served_as(run_id: str) -> list[tuple[str, str]]:
    """(model, version) pairs whose predictions and alerts are this run's model's: ("run", run id) and
    every registered version of the run; and the same for the full model a routed run was cut from
    (its `forecast.source_run` tag)."""
    client = MlflowClient()
    out = [("run", run_id), *[(v.name, str(v.version)) for v in client.search_model_versions(f"run_id = '{run_id}'")]]
    source = client.get_run(run_id).data.tags.get("forecast.source_run")
    return out + (served_as(source) if source and source != run_id else [])


def load_predict_state(run_id: str) -> dict:
    """The data state a run logged for predict (`predict/state.json`, see MarketData.predict_state)."""
    try:
        return mlflow.artifacts.load_dict(f"runs:/{run_id}/predict/state.json")
    except (MlflowException, OSError):
        raise UserError(f"model: run {run_id} has no predict/state.json (trained before `predict` existed); "
                        "train it again") from None
