"""Training data at scale: memory set by rows, not windows; one answer whatever the store layout;
the `bench catalogue` and `bench wide` commands end to end on tiny inputs."""
import json
import subprocess
import sys
from pathlib import Path

import torch

from data_pipelines.store import read_manifest, read_prices, write_prices
from forecast.data.market import MarketData

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = str(ROOT / "data" / "sample")


def held(dm: MarketData) -> int:
    """Bytes of every tensor the data module keeps between batches."""
    tensors = [*dm.inputs.values(), dm.ticker_ids, dm.targets, dm.date_ids, *dm.anchors.values()]
    return sum(t.nbytes for t in tensors)


def test_memory_follows_rows_not_windows():
    small, large = (MarketData(store=SAMPLE, tickers=None, window=w) for w in (8, 256))
    for dm in (small, large):
        dm.setup()
    rows = small.frame.height
    assert large.frame.height == rows and large.features.shape == (rows, 5)
    assert held(small) - held(large) == 8 * sum(len(small.anchors[s]) - len(large.anchors[s]) for s in small.anchors)
    assert not {"open", "high", "low", "volume"} & set(small.frame.columns)  # made into features, not kept
    batch = next(iter(large.train_dataloader()))
    assert batch["x"].shape == (large.batch_size, 256, 5)  # windows exist per batch only


def test_a_segmented_copy_of_the_sample_trains_on_the_same_numbers(tmp_path):
    frames = {t: df.drop("ticker") for (t,), df in read_prices(SAMPLE).partition_by("ticker", as_dict=True).items()}
    write_prices(tmp_path, frames, exchange="XNYS")
    assert read_manifest(tmp_path)["file"].str.starts_with("prices/bucket=").all()
    old, new = (MarketData(store=s, tickers=None, window=32, label="cs_demean") for s in (SAMPLE, str(tmp_path)))
    for dm in (old, new):
        dm.setup()
    for name in ("ticker_ids", "targets", "date_ids"):
        assert torch.equal(getattr(old, name), getattr(new, name)), name
    assert torch.equal(old.features, new.features) and (old.feature_mean == new.feature_mean).all()
    assert all(torch.equal(old.anchors[s], new.anchors[s]) for s in old.anchors)
    assert old.frame.equals(new.frame)


def run(*args: str, cwd: Path) -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "forecast", "bench", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()


def test_bench_catalogue_accounts_for_every_row_and_rereads_only_the_changed_files(tmp_path):
    out = tmp_path / "c.json"
    last = run("catalogue", "files=80", "rows_per_file=12", "years=2", "dirty=0.1", "changed=0.05", "repeats=2",
               f"workdir={tmp_path / 'w'}", f"out={out}", cwd=tmp_path)[-1]
    summary = dict(kv.split("=") for kv in last.split())
    assert summary["rows_match"] == "True" and summary["reingest_equals_full"] == "True"
    r = json.loads(out.read_text())
    assert r["reingest"]["files"] == r["changed_files"] == 4 and r["reingest"]["files_unchanged"] == 76
    assert len(r["reingest"]["seconds_runs"]) == 2 and r["reingest"]["seconds"] in r["reingest"]["seconds_runs"]
    assert r["first"]["rows_read"] == r["pandas"]["rows_read"] == r["expected"]["rows_read"]
    assert r["first"]["rows_stored"] == r["pandas"]["rows_stored"] and r["first"]["store_files"] <= 64
    assert set(r["first"]["split_seconds"]) == {"listing", "reading", "validating", "dedup", "writing"}


def test_bench_wide_runs_an_epoch_of_windows_and_training_steps(tmp_path):
    out = tmp_path / "w.json"
    run("wide", "tickers=6", "sessions=240", "window=16", "batch_size=64", "train_batches=2",
        "overrides=['model.d_model=8']", f"workdir={tmp_path / 'w'}", f"out={out}", cwd=tmp_path)
    r = json.loads(out.read_text())
    assert r["rows"] == 6 * 240 and r["data_epoch_windows"] == r["train_windows"] > 0 and r["train_steps"] == 2
    assert r["peak_rss_mb"] >= r["after_setup"]["rss_mb"] > 0 and 0 < r["first_batch_s"] and r["samples_per_s"] > 0
