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
    "bench ingest": ("bench_ingest", "data_pipelines.bench:ingest"),
}
USAGE = """usage: python -m forecast <command> [key=value ...] [-m]

commands:
  train             train a model on a store and log the run to MLflow (conf/train.yaml)
  evaluate          walk-forward evaluation against baselines (conf/evaluate.yaml)
  ingest            vendor CSV/Parquet files -> validated Parquet store (conf/ingest.yaml)
  synth             write a synthetic market with planted signals (conf/synth.yaml)
  bench backbones   tokens/s and memory of every backbone by sequence length
  bench ingest      ingest throughput against a plain pandas pipeline

Overrides are Hydra's: data.tickers=[SPX,GOOG] model/backbone=transformer -m for sweeps.
Add --cfg job to print the composed config."""


def one_line(error: BaseException) -> str:
    """The message of an error and of its causes, on one line, without Hydra's stack-trace hint."""
    parts = []
    while error is not None:
        text = re.sub(r"(Set the environment variable HYDRA_FULL_ERROR=1|Config search path:).*", "", str(error),
                      flags=re.S)
        text = re.sub(r"\s*\n\s*", "; ", text.strip()).strip("; ")
        if text and text not in parts:
            parts.append(text)
        error = error.__cause__ or error.__context__
    return ": ".join(parts) or "unknown error"


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def first_of_sweeps(overrides: list[str]) -> list[str]:
    """The overrides with every sweep replaced by its first value, to validate before launching."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for o in OverridesParser.create().parse_overrides(overrides):
        if o.is_hydra_override():
            continue
        if o.is_sweep_override():
            out.append(f"{o.get_key_element()}={next(o.sweep_string_iterator())}")
        else:
            out.append(o.input_line)
    return out


def validate(config_name: str, overrides: list[str]) -> None:
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            compose(config_name, overrides=first_of_sweeps(overrides))
    except Exception as e:  # noqa: BLE001 - every composition error is the user's config
        fail(one_line(e))


def make_task(target: str):
    def task(cfg):
        from hydra.errors import InstantiationException

        from data_pipelines.store import StoreError
        from forecast.errors import ConfigError, UserError

        module, name = target.split(":")
        try:
            result = getattr(importlib.import_module(module), name)(cfg)
        except InstantiationException as e:
            cause = e.__cause__
            key = re.search(r"full_key: (\S+)", str(e))
            if isinstance(cause, ConfigError) and key:
                fail(str(cause.within(key.group(1))))
            fail(one_line(e))
        except (UserError, StoreError) as e:
            fail(str(e))
        if isinstance(result, int) and not isinstance(result, bool) and result != 0:
            sys.exit(result)
        return result

    return task


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if argv[0] not in {c.split()[0] for c in COMMANDS} and "LOCAL_RANK" in os.environ:
        argv = [*os.environ[COMMAND_ENV].split(), *argv]  # a DDP worker re-launched by Lightning
    command = " ".join(argv[:2]) if argv[0] == "bench" and len(argv) > 1 else argv[0]
    if command not in COMMANDS:
        fail(f"unknown command {command!r}; commands: {', '.join(COMMANDS)}")
    overrides = argv[len(command.split()):]
    config_name, target = COMMANDS[command]
    from forecast.allocator import retain_freed_memory

    retain_freed_memory()  # before any tensor exists
    if not any(o.startswith("--") for o in overrides):
        validate(config_name, [o for o in overrides if o not in ("-m", "--multirun")])
    import hydra

    os.environ[COMMAND_ENV] = command
    multirun = [o for o in overrides if o in ("-m", "--multirun")]  # accepted anywhere on the line
    sys.argv = [f"forecast {command}", *multirun, *[o for o in overrides if o not in multirun]]
    hydra.main(config_path=CONF, config_name=config_name, version_base="1.3")(make_task(target))()


if __name__ == "__main__":
    main(sys.argv[1:])
