"""Per-rank memory of two DDP ranks (gloo, CPU) setting up the multi-ticker data on a wide store:
every rank reading the whole store (data.shard_tickers=false) against each reading its shard (true).

    python experiments/ddp_shards/shard_memory.py tickers=10000 sessions=2500 out=experiments/ddp_shards/result.json

Each rank runs MarketData.setup("plan") then setup("fit"), as `train` and Lightning do, and reports
its rows, train windows, setup seconds and peak resident memory (VmHWM). The store is written once
(forecast.data.bench_wide.make_store) under $TMPDIR and reused.
"""
import json
import os
import socket
import sys
import time
from pathlib import Path

import torch


def _peak_mb() -> int:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(status["VmHWM"].split()[0]) // 1024


def _rank(rank: int, world: int, port: int, store: str, shard: bool, out: str) -> None:
    from forecast.data.market import MarketData

    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    t = time.perf_counter()
    dm = MarketData(store, tickers=None, window=64, batch_size=512, shard_tickers=shard)
    dm.setup("plan")
    plan_s = time.perf_counter() - t
    dm.setup("fit")
    result = dict(rank=rank, rows=dm.frame.height, tickers=dm.frame["ticker"].n_unique(),
                  train_windows=len(dm.anchors["train"]), train_batches=len(dm.train_dataloader()),
                  plan_s=round(plan_s, 2), setup_s=round(time.perf_counter() - t, 2), peak_rss_mb=_peak_mb())
    Path(out, f"{int(shard)}_{rank}.json").write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


def main(tickers: int = 10000, sessions: int = 2500, out: str = "experiments/ddp_shards/result.json") -> None:
    from forecast.data.bench_wide import make_store

    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"forecast_shards_{tickers}x{sessions}"
    store = work / "store"
    if not (store / "manifest.parquet").exists():
        make_store(store, tickers, sessions, seed=0)
    load = os.getloadavg()[0]
    modes = {}
    for shard in (False, True):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        torch.multiprocessing.spawn(_rank, args=(2, port, str(store), shard, str(work)), nprocs=2)
        modes["shard_tickers" if shard else "whole_store"] = [json.loads((work / f"{int(shard)}_{r}.json").read_text())
                                                             for r in range(2)]
    peak = {m: max(r["peak_rss_mb"] for r in ranks) for m, ranks in modes.items()}
    result = dict(command=" ".join(["python", *sys.argv]), tickers=tickers, sessions=sessions, ranks=2,
                  cpus=len(os.sched_getaffinity(0)), load_avg_1min=[round(load, 1), round(os.getloadavg()[0], 1)],
                  **modes, max_rank_peak_mb=peak, peak_ratio=round(peak["whole_store"] / peak["shard_tickers"], 2))
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(dict(max_rank_peak_mb=peak, peak_ratio=result["peak_ratio"])))


if __name__ == "__main__":
    main(**{k: (v if k == "out" else int(v)) for k, v in (a.split("=", 1) for a in sys.argv[1:])})
