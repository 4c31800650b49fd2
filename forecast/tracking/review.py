"""What a reviewer sees first in the MLflow UI: the run's description, its tags, and a link that opens
the model-training view.

- `describe(markdown)`: the run's description (the `mlflow.note.content` tag), shown at the top of
  the run's Overview tab. Every command that logs a run writes its result table and verdict there.
- `run_tags(cfg)` / `tag_run(tags)`: tags to filter runs by in the UI's search box
  (`tags.backbone = 'mamba'`, `tags.tickers LIKE '%AAPL%'`): backbone, modalities, tickers and their
  count, store, horizon, label, window, code version and a hash of the data the run read.
- `run_url` / `experiment_url`: the links printed after a run.

How MLflow 3.17 chooses its view (read from its UI bundle, `mlflow/server/js/build`): the GenAI or
model-training layout is a per-browser setting, not a property of the experiment or the run. It is
the `workflowType` URL parameter (`genai` | `machine_learning`), else the last choice of the
"GenAI / Model training" switch at the top of the sidebar (kept in the browser's localStorage as
`mlflow.workflowType`), else `genai`. The experiment tag `mlflow.experimentKind` is read only when
that switch is disabled, and 3.17 ships it enabled, so the tag alone changes nothing there. So the
links carry `?workflowType=machine_learning`; the experiments still get the tag
(`custom_model_development`) for MLflow versions that read it. The assistant panel MLflow opens on
the right the first time a browser visits a local server is MLflow's too: close it once and the
browser remembers.
"""
from __future__ import annotations

import hashlib
import shlex
import subprocess
from importlib import metadata
from pathlib import Path

import mlflow
import polars as pl
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from forecast.resources import PACKAGE, conf_dir

DESCRIPTION = "mlflow.note.content"  # MLflow's run (and experiment) description
VIEW = "workflowType=machine_learning"  # the URL parameter that opens the model-training view
UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
MAX_LISTED = 200  # tickers named one by one in the `tickers` tag; more are counted (`n_tickers` always)
MAX_TAG = 5000  # MLflow keeps tag values up to 8,000 characters


def describe(markdown: str, run_id: str | None = None) -> None:
    """Write `markdown` as the description of `run_id`, or of the active run."""
    if run_id is None:
        mlflow.set_tag(DESCRIPTION, markdown)
    else:
        MlflowClient().set_tag(run_id, DESCRIPTION, markdown)


def tag_run(tags: dict, run_id: str | None = None) -> None:
    """Set `tags` (values as strings) on `run_id`, or on the active run."""
    tags = {k: str(v) for k, v in tags.items() if v is not None}
    if run_id is None:
        mlflow.set_tags(tags)
    else:
        client = MlflowClient()
        for key, value in tags.items():
            client.set_tag(run_id, key, value)


def tag_experiment(experiment_id: str) -> None:
    """The experiment tags of EXPERIMENT_TAGS, written only where missing (workers connect too)."""
    client = MlflowClient()
    have = client.get_experiment(experiment_id).tags
    for key, value in EXPERIMENT_TAGS.items():
        if have.get(key) != value:
            client.set_experiment_tag(experiment_id, key, value)


def ui_base(tracking_uri: str) -> str:
    """The UI of a tracking server is the server itself; a local store's is `mlflow ui`'s default."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else UI


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}?{VIEW}"


def experiment_url(tracking_uri: str, experiment_id: str) -> str:
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?{VIEW}"


def run_tags(cfg: DictConfig, command: str) -> dict[str, str]:
    """The filter tags of a run of `command` with config `cfg` (train, evaluate, ... configs)."""
    data = cfg.data
    tickers = _tickers(str(data.store), data.tickers)
    modalities = [str(m) for m in cfg.get("modalities") or data.get("modalities") or []]
    listed = ",".join(tickers)
    return {
        "command": command,
        "backbone": backbone_name(cfg.model.backbone) if "model" in cfg else None,
        "modalities": ",".join(modalities),
        "tickers": listed if len(tickers) <= MAX_LISTED else f"{len(tickers)} tickers",
        "n_tickers": str(len(tickers)),
        "store": str(data.store),
        "horizon": str(data.horizon),
        "label": str(data.get("label", "raw")),
        "window": str(data.window),
        "code_version": code_version(),
        "data_hash": data_hash(str(data.store), tickers, modalities),
        "overrides": overrides(),
    }


def overrides() -> str | None:
    """The command line's overrides of this run (a sweep trial's own values), when Hydra started it."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    text = " ".join(shlex.quote(o) for o in HydraConfig.get().overrides.task)
    return text[:MAX_TAG] if text else "-"


def parse_overrides(text: str | None) -> dict[str, str] | None:
    """The `overrides` tag as {key: value} (`+`/`~` dropped from keys; None for a run without it)."""
    if text is None:
        return None
    pairs = [o.partition("=") for o in shlex.split(text) if o != "-"]
    return {k.lstrip("+~"): v for k, _, v in pairs}


def run_name(cfg: DictConfig, command: str) -> str:
    """A run's default name, `<backbone> <tickers>` (`trial <n> ...` in a sweep): MLflow's random
    names repeat here, as every run seeds Python's random module the same way."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    tickers = _tickers(str(cfg.data.store), cfg.data.tickers)
    named = " ".join(tickers) if len(tickers) <= 3 else f"{len(tickers)} tickers"
    name = f"{command} {backbone_name(cfg.model.backbone)} {named}"
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        name = f"trial {HydraConfig.get().job.num}: {name}"
    return name


def backbone_name(backbone: DictConfig) -> str:
    """The `model/backbone` option whose `_target_` the config builds (mamba, transformer, ...)."""
    for path in sorted((conf_dir() / "model" / "backbone").glob("*.yaml")):
        if OmegaConf.load(path).get("_target_") == backbone._target_:
            return path.stem
    return str(backbone._target_).rsplit(".", 1)[-1].lower()


def _tickers(store: str, tickers) -> list[str]:
    if tickers:
        return sorted(str(t) for t in tickers)
    from data_pipelines.store import read_manifest

    return sorted(read_manifest(store)["ticker"].to_list())


def data_hash(store: str, tickers: list[str], modalities: list[str]) -> str:
    """12 hex digits that change when the data a run reads changes: the content hash the store keeps
    for each ticker's prices, and the bytes of the side tables the modalities read."""
    from data_pipelines.store import read_manifest

    h = hashlib.sha256()
    manifest = read_manifest(store).filter(pl.col("ticker").is_in(tickers)).sort("ticker")
    for ticker, digest in manifest.select("ticker", "content_hash").iter_rows():
        h.update(f"{ticker}:{digest}\n".encode())
    for modality in ("exogenous", "news"):
        path = Path(store) / f"{modality}.parquet"
        if modality in modalities and path.exists():
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:12]


def code_version() -> str:
    """The git commit of the source checkout this package runs from (`-dirty` with uncommitted
    changes to tracked files), else the installed distribution's version."""
    root = PACKAGE.parent
    try:
        top = _git(root, "rev-parse", "--show-toplevel")
        if Path(top).resolve() == root.resolve():
            commit = _git(root, "rev-parse", "HEAD")
            return commit + ("-dirty" if _git(root, "status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return f"forecast=={metadata.version('forecast')}"
    except metadata.PackageNotFoundError:
        return "unknown"


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip()


def markdown_table(frame: pl.DataFrame) -> str:
    """A frame as a GitHub-flavoured Markdown table (MLflow's description renders it); floats to 4
    significant digits, missing values as '-'."""
    shown = frame.with_columns(pl.col(c).map_elements(fmt_number, return_dtype=pl.String)
                               for c, t in frame.schema.items() if t.is_float())
    with pl.Config(tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True,
                   tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=1000, tbl_width_chars=65_000):
        return str(shown.fill_null("-"))


def fmt_number(value: float | None) -> str:
    """4 significant digits; None or NaN as '-'."""
    return "-" if value is None or value != value else f"{value:.4g}"
