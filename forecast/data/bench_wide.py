"""`python -m forecast bench wide tickers=10000 sessions=2500`: the multi-ticker model on a wide store.

A synthetic store of `tickers` x `sessions` random-walk OHLCV rows is written once (reused while its
parameters match). Then, in a fresh process (so peak memory is its own): `MarketData.setup` on the
whole store and the time from the process start to the first training batch; with `data_epoch`,
every window of the training epoch cut and batched (the data side of one epoch, without the model),
to show that memory stays flat over all of them: windows are gathered per batch from per-row arrays
by an index of anchors, never materialised; then `train_batches` steps of the `experiment=
multi_ticker` model (samples/s; a whole epoch of 17M windows takes hours on a CPU).

The child reports the resident memory (VmRSS) and its peak (VmHWM) after each stage; the 1-minute
load average before and after is recorded, since the machine may be shared.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from data_pipelines.ingest_bench import write_result


def make_store(path: Path, tickers: int, sessions: int, seed: int) -> None:
    """`tickers` random walks over the last `sessions` XNYS sessions to 2024, one write."""
    import datetime as dt

    import numpy as np
    import polars as pl

    from data_pipelines import calendars
    from data_pipelines.store import write_prices

    days = calendars.sessions("XNYS", dt.date(1980, 1, 1)).to_numpy().astype("datetime64[D]")
    days = days[days <= np.datetime64("2024-12-31")][-sessions:]
    rng = np.random.default_rng(seed)
    names = pl.Series([f"W{i:05d}" for i in range(tickers)])
    parts = []
    for lo in range(0, tickers, 1000):  # (1000 * sessions,) rows at a time keeps the float64 temporaries small
        n = min(1000, tickers - lo)
        close = 20 * np.exp(np.cumsum(rng.normal(0, 0.015, (n, sessions)), axis=1)).ravel()
        opn = close * np.exp(rng.normal(0, 0.005, close.size))
        wiggle = np.abs(rng.normal(0, 0.01, close.size))
        parts.append(pl.DataFrame(dict(
            ticker=names.slice(lo, n).gather(np.repeat(np.arange(n), sessions)), date=np.tile(days, n), open=opn,
            high=np.maximum(opn, close) * (1 + wiggle), low=np.minimum(opn, close) * (1 - wiggle), close=close,
            volume=rng.integers(1_000, 10_000_000, close.size).astype(np.float64))))
    write_prices(path, pl.concat(parts), exchange="XNYS")


def wide(cfg) -> int:
    """Build (or reuse) the store, run the measuring child, write the JSON and one summary line."""
    import shutil

    work = Path(cfg.workdir)
    params = dict(tickers=cfg.tickers, sessions=cfg.sessions, seed=cfg.seed)
    marker, store = work / "params.json", work / "store"
    if not marker.exists() or json.loads(marker.read_text()) != params:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        t = time.perf_counter()
        make_store(store, cfg.tickers, cfg.sessions, cfg.seed)
        marker.write_text(json.dumps(params))
        print(f"wrote {cfg.tickers * cfg.sessions} rows in {time.perf_counter() - t:.1f} s to {store}")
    load = os.getloadavg()[0]
    args = dict(store=str(store), window=cfg.window, batch_size=cfg.batch_size, train_batches=cfg.train_batches,
                data_epoch=cfg.data_epoch, threads=cfg.threads, overrides=list(cfg.overrides))
    proc = subprocess.run([sys.executable, "-m", "forecast.data.bench_wide", json.dumps(args)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"bench wide child failed: {proc.stderr.strip()[-800:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    out = dict(params, **{k: v for k, v in args.items() if k != "store"}, cpus=len(os.sched_getaffinity(0)),
               load_avg_1min=[round(load, 1), round(os.getloadavg()[0], 1)], **result)
    write_result(out, cfg.out, ("rows", "train_windows", "peak_rss_mb", "first_batch_s", "samples_per_s",
                                "data_epoch_windows_per_s", "data_epoch_s"))
    return 0


def _memory() -> dict:
    """Resident and peak resident memory of this process, MB (from /proc, else getrusage)."""
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return dict(rss_mb=int(status["VmRSS"].split()[0]) // 1024, peak_rss_mb=int(status["VmHWM"].split()[0]) // 1024)
    except (OSError, KeyError):
        return dict(peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)


def child(args: dict) -> None:
    """Measure setup, first batch, training steps and (optionally) a data-only epoch; print JSON."""
    start = time.perf_counter()
    import lightning as L
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from forecast.model import ensemble
    from forecast.resources import conf_dir, register_resolvers

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    register_resolvers()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=multi_ticker", f"data.store={args['store']}",
                                          f"data.window={args['window']}", f"data.batch_size={args['batch_size']}",
                                          *args["overrides"]])
    out = dict(import_s=round(time.perf_counter() - start, 2))
    t = time.perf_counter()
    dm = instantiate(cfg.data)
    dm.setup("fit")
    out.update(setup_s=round(time.perf_counter() - t, 2), rows=dm.frame.height, train_windows=len(dm.anchors["train"]),
               frame_mb=round(dm.frame.estimated_size() / 2**20),
               tensors_mb=round(sum(v.nbytes for v in _tensors(dm)) / 2**20), after_setup=_memory())
    next(iter(dm.train_dataloader()))  # (B, L, F) windows of the first batch
    out.update(first_batch_s=round(time.perf_counter() - start, 2))
    if args["data_epoch"]:
        out.update(_data_epoch(dm))
    model = ensemble.build(cfg.model, dm.dims)
    first = _first_batch(L.Callback)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=args["train_batches"] or 1.0,
                        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[first])
    t = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    steps = trainer.global_step
    out.update(first_step_s=round(first.at - t, 2), train_steps=steps,
               samples_per_s=round(steps * args["batch_size"] / max(time.perf_counter() - first.at, 1e-9), 1),
               after_train=_memory())
    out["peak_rss_mb"] = _memory()["peak_rss_mb"]
    print(json.dumps(out))


def _data_epoch(dm) -> dict:
    """Every window of one training epoch, gathered batch by batch, without a model."""
    t, n = time.perf_counter(), 0
    for batch in dm.train_dataloader():
        n += batch["y"].shape[0]
    return dict(data_epoch_windows=n, data_epoch_s=round(time.perf_counter() - t, 1),
                data_epoch_windows_per_s=round(n / max(time.perf_counter() - t, 1e-9)), after_data_epoch=_memory())


def _tensors(dm) -> list:
    return [*dm.inputs.values(), dm.ticker_ids, dm.targets, dm.date_ids, *dm.anchors.values()]


def _first_batch(callback_base: type):
    """A Lightning callback that notes when the first training batch reaches the model."""

    class FirstBatch(callback_base):
        at: float | None = None

        def on_train_batch_start(self, *args) -> None:
            if self.at is None:
                self.at = time.perf_counter()

    return FirstBatch()


if __name__ == "__main__":
    child(json.loads(sys.argv[1]))
