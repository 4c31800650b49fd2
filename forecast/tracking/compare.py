"""`python -m forecast compare`: runs side by side in the terminal, read back from MLflow.

The trials of a sweep (`parent=<sweep run id>`) or the runs of an experiment (walk-forward fold runs
and sweep parents left out: the evaluate run and the trials hold their results), as one table: the
config values that differ between the listed runs (from the command-line overrides each run logged
as its `overrides` tag; for a sweep, the swept values), the metric they are sorted by (`sort`,
default `val/best_loss`: what a sweep ranks its trials by, so the test split never chooses), the
test metrics, and a link to each run in MLflow's model-training view. Best first; runs without the
sort metric (failed, or of another command) last. `--format csv` (all digits) or `--format markdown`
write a file's worth to stdout, the summary line then going to stderr.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import polars as pl
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from forecast.errors import ConfigError
from forecast.tracking.review import fmt_number, markdown_table, parse_overrides, run_url
from forecast.tracking.runs import check_reachable

PARENT = "mlflow.parentRunId"
DERIVED = re.compile(r"^data\.n_\w+$|_resolved$|^evaluate\.n_folds$")  # logged consequences, not choices
LOWER_IS_BETTER = re.compile(r"(loss|mse|mae|turnover|_p)$")


def compare(cfg: DictConfig) -> None:
    uri = cfg.logger.tracking_uri
    client = MlflowClient(uri)
    experiment = _experiment(client, uri, cfg.experiment_name, cfg.parent)
    found = list_runs(client, experiment.experiment_id, cfg.parent, cfg.filter)
    table = runs_table(found, cfg.sort, cfg.order, cfg.top, list(cfg.metrics), cfg.params, uri) if found else None
    if table is None:
        print(f"no runs in experiment {experiment.name!r}" + (f" under {cfg.parent}" if cfg.parent else ""))
    else:
        print(render(table, cfg.format))
    best = table["run_id"][0] if table is not None and table[cfg.sort][0] is not None else "-"
    summary = (f"runs={len(found)} shown={0 if table is None else table.height} experiment={experiment.name} "
               f"parent={cfg.parent or '-'} sort={cfg.sort} best={best}")
    print(summary, file=sys.stdout if cfg.format == "table" else sys.stderr)


def list_runs(client: MlflowClient, experiment_id: str, parent: str | None, filter_string: str | None) -> list:
    """A sweep's (or any run's) children, else the experiment's runs less fold runs and sweep parents."""
    clauses = [f"tags.`{PARENT}` = '{parent}'"] if parent else []
    query = " and ".join([*clauses, *([filter_string] if filter_string else [])])
    found, token = [], None
    try:
        while True:
            page = client.search_runs([experiment_id], query, max_results=1000, page_token=token)
            found += page
            token = page.token
            if not token:
                break
    except MlflowException as e:
        raise ConfigError("filter", f"{filter_string!r}: {e.message.splitlines()[0]}") from None
    if parent:
        return found
    return [r for r in found if "fold" not in r.data.tags and r.data.tags.get("forecast.role") != "sweep"]


def runs_table(found: list, sort: str, order: str, top: int, metrics: list[str], params: list[str] | None,
               tracking_uri: str) -> pl.DataFrame:
    """Rank, name, id, command, the params, the sort metric and the other metrics present, and the link."""
    known = sorted({k for r in found for k in r.data.metrics})
    if sort not in known:
        raise ConfigError("sort", f"no listed run has the metric {sort!r}; metrics: {known}")
    descending = order == "desc" or (order == "auto" and not LOWER_IS_BETTER.search(sort))
    scored = sorted((r for r in found if sort in r.data.metrics), key=lambda r: r.data.metrics[sort],
                    reverse=descending)
    shown = (scored + [r for r in found if sort not in r.data.metrics])[:top]
    config = config_columns(shown, params)
    columns = [sort, *[m for m in metrics if m != sort and any(m in r.data.metrics for r in shown)]]
    rows = {
        "#": [str(i + 1) for i in range(len(shown))],
        "run": [r.info.run_name or "-" for r in shown],
        "run_id": [r.info.run_id for r in shown],
        "command": [r.data.tags.get("command", "-") for r in shown],
        **_parents(shown),
        **config,
        **{m: [r.data.metrics.get(m) for r in shown] for m in columns},
        "link": [run_url(tracking_uri, r.info.experiment_id, r.info.run_id) for r in shown],
    }
    schema = {k: (pl.Float64 if k in columns else pl.String) for k in rows}
    return pl.DataFrame(rows, schema=schema)


def _parents(shown: list) -> dict[str, list[str]]:
    """A `parent` column (the sweep of each trial) when the runs do not all share one parent."""
    parents = [r.data.tags.get(PARENT, "-") for r in shown]
    return {"parent": parents} if len(set(parents)) > 1 else {}


def config_columns(shown: list, params: list[str] | None) -> dict[str, list]:
    """The config values shown: `params` when given (each run's override of it, else its param);
    else the overrides whose values differ between the runs ('-': not given, the config's default),
    which for a sweep are the swept values; runs logged without their overrides: differing params."""
    given = [parse_overrides(r.data.tags.get("overrides")) for r in shown]
    if params:
        return {p: [(o or {}).get(p, r.data.params.get(p)) for o, r in zip(given, shown)] for p in params}
    if any(o is None for o in given):
        return {k: [r.data.params.get(k) for r in shown] for k in differing_params(shown)}
    columns = {k: [o.get(k) for o in given] for k in sorted({k for o in given for k in o})}
    return {k: v for k, v in columns.items() if len(set(v)) > 1}


def differing_params(found: list) -> list[str]:
    """Params whose value is not the same in every run (a param missing from some runs differs among
    runs of one command: `+trainer.limit_train_batches=4` on some trials), derived ones left out."""
    out = set()
    for key in {k for r in found for k in r.data.params if not DERIVED.search(k)}:
        present = {r.data.params[key] for r in found if key in r.data.params}
        by_command = {}
        for r in found:
            by_command.setdefault(r.data.tags.get("command"), set()).add(r.data.params.get(key))
        if len(present) > 1 or any(len(v) > 1 for v in by_command.values()):
            out.add(key)
    return sorted(out)


def render(table: pl.DataFrame, fmt: str) -> str:
    """`table` (aligned, for a terminal), `markdown`, or `csv` (metrics with all their digits)."""
    if fmt == "csv":
        return table.write_csv().rstrip("\n")
    if fmt == "markdown":
        return markdown_table(table.with_columns(link=pl.format("[open]({})", "link")))
    shown = table.with_columns(pl.col(c).map_elements(fmt_number, return_dtype=pl.String)
                               for c, t in table.schema.items() if t.is_float()).fill_null("-")
    with pl.Config(tbl_formatting="UTF8_FULL_CONDENSED", tbl_hide_column_data_types=True,
                   tbl_hide_dataframe_shape=True, tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=1000,
                   tbl_width_chars=65_000):
        return str(shown)


def _experiment(client: MlflowClient, uri: str, name: str, parent: str | None):
    """The parent's experiment when `parent` is given, else the one named `name`."""
    if parent:
        return client.get_experiment(client.get_run(parent).info.experiment_id)
    return client.get_experiment_by_name(name)


def check(plain: dict) -> None:
    """The store, the experiment and the parent run exist (nothing is created where they do not)."""
    uri = plain["logger"]["tracking_uri"]
    check_reachable(uri, "logger.tracking_uri")
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise ConfigError("logger.tracking_uri", f"no tracking store at {uri} (nothing was logged there)")
    client = MlflowClient(uri)
    if plain.get("parent"):
        try:
            client.get_run(plain["parent"])
        except MlflowException:
            sweeps = [r.info.run_id for r in client.search_runs(
                [e.experiment_id for e in client.search_experiments()], "tags.`forecast.role` = 'sweep'",
                max_results=5, order_by=["attributes.start_time DESC"])]
            raise ConfigError("parent", f"no run {plain['parent']} in {uri}; "
                                        f"recent sweeps: {sweeps or 'none'}") from None
    elif client.get_experiment_by_name(plain["experiment_name"]) is None:
        names = [e.name for e in client.search_experiments()]
        raise ConfigError("experiment", f"no experiment {plain['experiment_name']!r} in {uri}; experiments: {names}")
