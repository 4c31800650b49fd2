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
