"""Every config value checked before work starts: typed schemas, one `error: <key>: <message>` line.

`check(command, cfg)` runs right after Hydra composes the config, before any data is read or any
tracking store is created. Two kinds of schema, both pydantic models:
- parts (parts.py), keyed by the `_target_` they build: wherever a node with that target sits in
  the config (`data`, `model.backbone`, `model.encoders.news`, `trainer`, ...), its keys are checked
  against the constructor's schema: types, ranges, choices, dates.
- commands (commands.py): the keys of a command's own config that build nothing (`seed`,
  `baselines`, the `evaluate:` block, every key of `ingest`, `synth`, `bench ...`).

Pydantic rather than Hydra structured configs: dataclass schemas give Hydra types but not ranges,
cross-field rules (purge >= horizon, d_model divisible by n_heads) or choices read at run time (the
store's stores, exchange calendars), and they would have to replace the YAML defaults; here the YAML
files stay the single place of defaults and comments, and the schemas the single place of rules.
A test validates every config file of conf/ against them, so neither can drift from the other.
"""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ValidationError

from forecast.errors import ConfigError


def check(command: str, cfg: DictConfig) -> None:
    """Raise ConfigError(key, message) for the first wrong value of `cfg`, the config of `command`."""
    from forecast.config.commands import COMMANDS as OWN
    from forecast.config.compress import COMMANDS as COMPRESS
    from forecast.config.inference import COMMANDS as INFERENCE
    from forecast.config.monitor import COMMANDS as MONITOR
    from forecast.config.parts import PARTS
    from forecast.config.specialise import COMMANDS as SPECIALISE

    COMMANDS = {**OWN, **INFERENCE, **COMPRESS, **MONITOR, **SPECIALISE}

    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # noqa: BLE001 - an interpolation that does not resolve is the user's config
        raise ConfigError(getattr(e, "full_key", None) or "config", _first_line(e)) from None
    plain.pop("hydra", None)
    schema = COMMANDS.get(command)
    if schema is not None:
        validate(schema, plain, "")
    for key, node in _targets(plain, ""):
        part = PARTS.get(node["_target_"])
        if part is not None:
            checked = validate(part, {k: v for k, v in node.items() if k not in ("_target_", "_partial_")}, key)
            if hasattr(checked, "check_references"):
                try:
                    checked.check_references()
                except ConfigError as e:
                    raise e.within(key) from None
    if schema is not None:
        schema.cross_check(plain)


def validate(schema: type[BaseModel], values: dict, prefix: str) -> BaseModel:
    try:
        return schema.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        key = _key(prefix, err["loc"], values)
        got = err.get("input")
        shown = "" if err["type"] in ("missing", "value_error") or isinstance(got, dict) else f", got {got!r}"
        message = _message(err)
        field, sep, rest = message.partition(": ")  # a rule across fields names the one it blames
        if sep and field in schema.model_fields:
            key, message = _key(key, (field,), {field: None}), rest
        raise ConfigError(key or "config", f"{message}{shown}") from None


def _key(prefix: str, loc: tuple, values) -> str:
    """The dotted key of an error's location: ('model', 'lr') -> model.lr, a list item -> tickers[1];
    the names pydantic gives the members of a union (`constrained-int`) are not keys and are left out."""
    key, node = prefix, values
    for part in loc:
        if isinstance(part, int) and isinstance(node, list) and part < len(node):
            key, node = f"{key}[{part}]", node[part]
        elif isinstance(node, dict) and part in node:
            key, node = (f"{key}.{part}" if key else str(part)), node[part]
    return key


def _message(err: dict) -> str:
    text = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        text = text.removeprefix(prefix)
    return text[0].lower() + text[1:] if text else text


def _targets(node, key: str):
    """(dotted key, node) for every mapping with a `_target_`, depth first."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield key, node
        for k, v in node.items():
            yield from _targets(v, f"{key}.{k}" if key else str(k))


def _first_line(e: Exception) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__
