"""What ships inside the package: the Hydra configs and the bundled sample store.

Both are found through the package, never through the current folder, so `python -m forecast ...`
works from any directory. In an installed wheel they live in the package (`forecast/conf`,
`forecast/sample`); in a source checkout (also an editable install) beside it (`conf/`, `data/sample`).
Everything a run writes (mlflow.db, checkpoints/, outputs/) stays in the current folder.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def _first(*candidates: Path) -> Path:
    return next((p for p in candidates if p.exists()), candidates[-1])


def conf_dir() -> Path:
    """The folder holding train.yaml and the config groups."""
    return _first(PACKAGE / "conf", PACKAGE.parent / "conf")


def sample_store() -> str:
    """The bundled sample store (SPX, NDX, GOOG, 1999-2018, with macro series): `${sample_store:}`."""
    return str(_first(PACKAGE / "sample", PACKAGE.parent / "data" / "sample"))


def register_resolvers() -> None:
    """`${sample_store:}` in configs; registered once per process that composes or resolves a config."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("sample_store"):
        OmegaConf.register_new_resolver("sample_store", sample_store)
