import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONF = str(ROOT / "conf")
# Tiny settings for end-to-end runs: seconds, not minutes.
TINY = ["data.window=16", "data.batch_size=256", "model.d_model=16", "trainer.max_epochs=2",
        "+trainer.limit_train_batches=4", "+trainer.limit_val_batches=2", "trainer.enable_progress_bar=false"]


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    """Configs name the bundled store relative to the project root, as a user's shell would."""
    monkeypatch.chdir(ROOT)
    os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> dict:
    """The package installed as a user installs it (`pip install .`, not editable) into a folder of
    its own, and the environment that runs it from any working directory: PYTHONPATH puts that copy
    ahead of the source tree, so configs and the bundled sample must come from the installed files."""
    import shutil
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("install")
    src, site = tmp / "src", tmp / "site"
    keep = ["forecast", "data_pipelines", "hydra_plugins", "conf", "data", "pyproject.toml", "setup.py", "README.md"]
    for name in keep:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(src)], check=True, capture_output=True, timeout=300)
    return dict(os.environ, PYTHONPATH=str(site))


def cli(capsys, argv: list[str]) -> tuple[int, list[str], str]:
    """`python -m forecast <argv>` in this process: its exit code, stdout lines and stderr."""
    import sys

    from hydra.core.global_hydra import GlobalHydra

    from forecast.__main__ import main

    saved, code = list(sys.argv), 0
    try:
        main(argv)
    except SystemExit as e:
        code = e.code
    finally:
        GlobalHydra.instance().clear()
        sys.argv = saved
    out = capsys.readouterr()
    return code, out.out.strip().splitlines(), out.err.strip()
