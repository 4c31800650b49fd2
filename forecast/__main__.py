"""`python -m forecast <command> [hydra overrides]`: one dispatcher, one Hydra config per command.

User errors (unknown keys, bad values, missing stores or tickers) print one line, `error: ...`, and
exit with code 2. Heavy imports happen only inside the command that needs them.
"""
from __future__ import annotations

import importlib
import os
import re
import sys

from forecast.resources import conf_dir

CONF = str(conf_dir())
# Lightning re-launches DDP workers as `python -m forecast <overrides>`, without the command: the
# environment is the only way to tell them which command they are part of.
COMMAND_ENV = "FORECAST_COMMAND"
# command -> (config name in conf/, "module:function")
COMMANDS = {
    "train": ("train", "forecast.training.train:train"),
    "evaluate": ("evaluate", "forecast.evaluation.evaluate:evaluate"),
    "ingest": ("ingest", "data_pipelines.ingest:run"),
    "synth": ("synth", "data_pipelines.synthetic:run"),
    "bench backbones": ("bench_backbones", "forecast.model.backbones.bench:backbones"),
    "bench ingest": ("bench_ingest", "data_pipelines.ingest_bench:ingest"),
    "bench catalogue": ("bench_catalogue", "data_pipelines.catalogue_bench:catalogue"),
    "bench wide": ("bench_wide", "forecast.data.bench_wide:wide"),
    "predict": ("predict", "forecast.inference.predict:predict"),
    "schedule": ("schedule", "forecast.inference.schedule:schedule"),
    "monitor": ("monitor", "forecast.inference.monitor:monitor"),
    "bench predict": ("bench_predict", "forecast.inference.bench:predict_speed"),
    "server": ("server", "forecast.tracking.server:serve"),
    "compare": ("compare", "forecast.tracking.compare:compare"),
    "compress": ("compress", "forecast.compress.command:compress"),
    "specialise": ("specialise", "forecast.compress.specialise:specialise"),
}
USAGE = """usage: python -m forecast <command> [key=value ...] [-m]

commands:
  train             train a model on a store and log the run to MLflow (conf/train.yaml)
  evaluate          walk-forward evaluation against baselines (conf/evaluate.yaml)
  ingest            vendor CSV/Parquet files -> validated Parquet store (conf/ingest.yaml)
  synth             write a synthetic market with planted signals (conf/synth.yaml)
  bench backbones   tokens/s and memory of every backbone by sequence length
  bench ingest      ingest throughput against a plain pandas pipeline
  bench catalogue   ingest of a drop of many small files (first, incremental, pandas) (conf/bench_catalogue.yaml)
  bench wide        memory and speed of multi-ticker training on a wide synthetic store (conf/bench_wide.yaml)
  predict           the next session's forecasts of a registered model into a SQL table (conf/predict.yaml)
  schedule          run `predict catch_up=true` after every close of the model's exchange (conf/schedule.yaml)
  monitor           realised performance, input and performance drift, alerts, retrain (conf/monitor.yaml)
  bench predict     seconds of one `predict` over a synthetic store of N tickers
  server            the team's MLflow tracking server on PostgreSQL; Optuna studies there too (conf/server.yaml)
  compare           runs side by side from MLflow: a sweep's trials or an experiment, best first (conf/compare.yaml)
  compress          shrink a trained model to a device's budget: prune, distil, int8 -> ONNX (conf/compress.yaml)
  specialise        small specialists + a router, the full model as fallback, one routed model (conf/specialise.yaml)

Overrides are Hydra's: data.tickers=[SPX,GOOG] model/backbone=transformer -m for sweeps.
Add --cfg job to print the composed config."""


def one_line(error: BaseException) -> str:
    """The message of an error and of its causes, on one line, without Hydra's stack-trace hint."""
    parts = []
    while error is not None and type(error).__name__ != "_RemoteTraceback":  # a worker's traceback text
        text = re.sub(r"(Set the environment variable HYDRA_FULL_ERROR=1|Config search path:).*", "", str(error),
                      flags=re.S)
        text = re.sub(r"\s*\n\s*", "; ", text.strip()).strip("; ")
        if text and text not in parts:
            parts.append(text)
        error = error.__cause__ or error.__context__
    return ": ".join(parts) or "unknown error"


def fail(message: str) -> None:
    for command, keys in RENAMED.items():  # name the key as the user wrote it (model=, not model_ref=)
        if command == os.environ.get(COMMAND_ENV) or command == (sys.argv[1:2] or [""])[0]:
            for given, internal in keys.items():
                message = re.sub(rf"^{internal}\b", given, message)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def sweep_variants(overrides: list[str]) -> list[list[str]]:
    """The overrides with every sweep replaced by its first value, then one list per other value of
    each sweep (the rest at their first values), so every value is checked before a trial starts."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = [o for o in OverridesParser.create().parse_overrides(overrides)
              if not o.is_hydra_override() and (o.is_discrete_sweep() or not o.is_sweep_override())]
    values = [list(o.sweep_string_iterator()) if o.is_discrete_sweep() else [] for o in parsed]
    first = [f"{o.get_key_element()}={v[0]}" if v else o.input_line for o, v in zip(parsed, values)]
    variants = [first]
    for i, (o, vals) in enumerate(zip(parsed, values)):
        variants += [[*first[:i], f"{o.get_key_element()}={v}", *first[i + 1:]] for v in vals[1:]]
    return variants


def validate(command: str, config_name: str, overrides: list[str]) -> None:
    """Compose and check the config (every value of a sweep) before Hydra starts anything."""
    from hydra import compose, initialize_config_dir

    from forecast.errors import UserError

    try:
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            for variant in sweep_variants(overrides):
                check(command, compose(config_name, overrides=variant))
    except UserError as e:
        fail(str(e))
    except Exception as e:  # noqa: BLE001 - every composition error is the user's config
        fail(composition_error(e))


def composition_error(e: Exception) -> str:
    """Hydra's composition errors as `<key>: <message>`: an unknown group option, an unparsable override."""
    text = one_line(e)
    option = re.search(r"Could not find '(.+)/([^'/]+)'; Available options in '[^']+':; (.*)", text)
    if option:
        return f"{option.group(1)}: no option {option.group(2)!r}; options: {option.group(3).replace(';', ',')}"
    override = re.search(r"Error parsing override '([^=']+)=(.*?)'; (.*?)(; See https|$)", text)
    if override:
        return f"{override.group(1)}: cannot parse {override.group(2)!r} ({override.group(3)}); quote it: key='value'"
    return text


def check(command: str, cfg) -> None:
    from forecast.config import check as check_config

    check_config(command, cfg)


def instantiation_error(e: Exception) -> str:
    """`<key>: <message>` for an error raised while Hydra built a part from config."""
    from forecast.errors import ConfigError

    cause = e.__cause__
    key = re.search(r"full_key: (\S+)", str(e))
    if isinstance(cause, ConfigError) and key:
        return str(cause.within(key.group(1)))
    if cause is not None and key:
        return f"{key.group(1)}: {one_line(cause)}"
    return one_line(e)


def make_task(command: str, target: str):
    def task(cfg):
        from hydra.errors import InstantiationException

        from data_pipelines.store import StoreError
        from forecast.errors import UserError

        module, name = target.split(":")
        try:
            check(command, cfg)  # again per trial: a sweeper's own values (Optuna) were not seen before
            result = getattr(importlib.import_module(module), name)(cfg)
        except InstantiationException as e:
            fail(instantiation_error(e))
        except (UserError, StoreError) as e:
            fail(str(e))
        if isinstance(result, int) and not isinstance(result, bool) and result != 0:
            sys.exit(result)
        return result

    return task


# A command's keys named like a config group (conf/model/): Hydra reads `model=...` as a choice of that
# group whatever the command's config holds, so the CLI passes them on under the name the config uses.
RENAMED = {"predict": {"model": "model_ref"}, "schedule": {"model": "model_ref"},
           "monitor": {"model": "model_ref"}, "compress": {"model": "model_ref"},
           "specialise": {"model": "model_ref", "specialists": "specialist@specialists"},
           "compare": {"experiment": "experiment_name"}}


def renamed(command: str, override: str) -> str:
    key, sep, value = override.partition("=")
    new = RENAMED.get(command, {}).get(key)
    return f"{new}={value}" if sep and new else override


# A command's own `--key value` options, passed on as `key='value'` overrides of its config: quoted
# for Hydra, so a value may hold spaces, `=` and quotes (`--filter "tags.backbone = 'mamba'"`).
OPTIONS = {"compare": ("format", "filter")}


def options(command: str, overrides: list[str]) -> list[str]:
    out, rest = [], iter(overrides)
    for o in rest:
        key, sep, value = o.removeprefix("--").partition("=")
        if o.startswith("--") and key in OPTIONS.get(command, ()):
            value = value if sep else next(rest, "")
            o = f"{key}='" + value.replace("'", "\\'") + "'"
        out.append(o)
    return out


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if argv[0] not in {c.split()[0] for c in COMMANDS} and "LOCAL_RANK" in os.environ:
        argv = [*os.environ[COMMAND_ENV].split(), *argv]  # a DDP worker re-launched by Lightning
    command = " ".join(argv[:2]) if argv[0] == "bench" and len(argv) > 1 else argv[0]
    if command not in COMMANDS:
        fail(f"unknown command {command!r}; commands: {', '.join(COMMANDS)}")
    overrides = [renamed(command, o) for o in options(command, argv[len(command.split()):])]
    config_name, target = COMMANDS[command]
    from forecast.allocator import retain_freed_memory

    retain_freed_memory()  # before any tensor exists
    if not any(o.startswith("--") for o in overrides):
        validate(command, config_name, [o for o in overrides if o not in ("-m", "--multirun")])
    import hydra

    os.environ[COMMAND_ENV] = command
    multirun = [o for o in overrides if o in ("-m", "--multirun")]  # accepted anywhere on the line
    sys.argv = [f"forecast {command}", *multirun, *[o for o in overrides if o not in multirun]]
    hydra.main(config_path=CONF, config_name=config_name, version_base="1.3")(make_task(command, target))()


if __name__ == "__main__":
    main(sys.argv[1:])
