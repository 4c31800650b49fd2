"""`python -m forecast bench catalogue files=100000 rows_per_file=40`: ingest a drop of many small files.

The drop (`vendor_drop.py`: Yahoo and per-ticker-per-year Stooq files, a few bad rows and duplicates)
is written once under `workdir` and reused while its parameters match. Each step runs in a fresh
process, so its peak memory is its own, after one read of every file (page cache warm for all):

    first     `ingest` into an empty store: files/s, rows/s, the split of its time, peak RSS, and
              `rows_match`: rows_read = stored + quarantined + duplicates, as the drop's own counts
              say, and every stored row read back from the store
    reingest  `changed` of the files rewritten (one close moved inside its day's range), then an
              incremental ingest of the whole drop into a copy of the first store (only those files
              are read); `repeats` times, each into a fresh copy: the median run, and every run's seconds
    verify    a full ingest of the changed drop into a new store: the incremental store must equal it
    pandas    the same steps as a plain pandas loop (read_csv per file, concat, the value rules and
              the session check, duplicates, Adj Close, one Parquet file): no catalogue, no quarantine
              reasons, so a lower bound on what pandas code would cost

The 1-minute load average before and after is recorded: on a shared machine wall times stretch.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from data_pipelines.ingest_bench import write_result

VARIANTS = ("first", "reingest", "verify", "pandas")


def catalogue(cfg) -> int:
    """Write (or reuse) the drop, run the variants, write the JSON, print one summary line."""
    work = Path(cfg.workdir)
    params = dict(files=cfg.files, rows_per_file=cfg.rows_per_file, years=cfg.years, dirty=cfg.dirty, seed=cfg.seed)
    drop, marker = work / "drop", work / "params.json"
    if not marker.exists() or json.loads(marker.read_text()) != params:
        from data_pipelines import vendor_drop

        shutil.rmtree(work, ignore_errors=True)
        t = time.perf_counter()
        info = vendor_drop.write(drop, cfg.files, cfg.rows_per_file, cfg.years, cfg.dirty, cfg.seed)
        marker.write_text(json.dumps(params))
        (work / "drop.json").write_text(json.dumps(info))
        print(f"wrote {info['files']} files ({info['rows']} rows) in {time.perf_counter() - t:.1f} s under {drop}")
    info = json.loads((work / "drop.json").read_text())
    _restore(work)  # a previous run's changed files are put back: every run starts from the same drop
    files = sorted(p for p in drop.rglob("*") if p.is_file())
    for p in files:
        p.read_bytes()  # warm the page cache for every variant alike
    load = os.getloadavg()[0]
    results = {}
    for variant in [v for v in VARIANTS if v in cfg.variants]:
        if variant == "reingest":
            results["changed_files"] = _change(work, files, cfg.changed, cfg.seed)
            results[variant] = _reingest(drop, work, cfg.repeats)
        else:
            results[variant] = _run(variant, drop, work / f"store_{variant}")
    out = dict(params, drop_mb=round(sum(p.stat().st_size for p in files) / 1e6), tickers=info["tickers"],
               expected=info["expected"], cpus=len(os.sched_getaffinity(0)), **results,
               load_avg_1min=[round(load, 1), round(os.getloadavg()[0], 1)], **_ratios(results, info))
    _restore(work)
    if not cfg.keep:
        for v in VARIANTS:
            shutil.rmtree(work / f"store_{v}", ignore_errors=True)
    write_result(out, cfg.out, ("files_per_s", "rows_per_s", "peak_rss_mb", "rows_match", "speedup_vs_pandas",
                                "reingest_speedup", "reingest_equals_full"))
    return 0


def _ratios(results: dict, info: dict) -> dict:
    first = results.get("first", {})
    out = {k: first.get(k) for k in ("files_per_s", "rows_per_s", "peak_rss_mb")}
    out["rows_match"] = bool(first) and first["rows_match"] and all(first[k] == v for k, v in info["expected"].items())
    if "pandas" in results and first:
        out["speedup_vs_pandas"] = round(results["pandas"]["seconds"] / first["seconds"], 2)
    if "reingest" in results and first:
        out["reingest_speedup"] = round(first["seconds"] / results["reingest"]["seconds"], 1)
    if "verify" in results and "reingest" in results:
        out["reingest_equals_full"] = results["reingest"]["prices_hash"] == results["verify"]["prices_hash"]
    return out


def _change(work: Path, files: list[Path], share: float, seed: int) -> int:
    """Rewrite `share` of the files (originals kept under work/originals): one close moved to the
    middle of its day's high-low range, so the row stays valid and the ticker's content changes."""
    import numpy as np

    rng = np.random.default_rng(seed + 7)
    picked = sorted(rng.choice(len(files), max(1, int(len(files) * share)), replace=False))
    keep = work / "originals"
    for i in picked:
        path = files[i]
        lines = path.read_text().splitlines()
        f = lines[1].split(",")
        f[4] = f"{(float(f[2]) + float(f[3])) / 2:.4f}"  # Date,Open,High,Low,Close,...
        if "Adj Close" in lines[0]:
            f[5] = f[4]
        backup = keep / path.relative_to(work / "drop")
        backup.parent.mkdir(parents=True, exist_ok=True)
        if not backup.exists():
            shutil.copy2(path, backup)
        path.write_text("\n".join([lines[0], ",".join(f), *lines[2:]]) + "\n")
    return len(picked)


def _restore(work: Path) -> None:
    keep = work / "originals"
    if keep.exists():
        for backup in (p for p in keep.rglob("*") if p.is_file()):
            shutil.copy2(backup, work / "drop" / backup.relative_to(keep))
        shutil.rmtree(keep)


def _reingest(drop: Path, work: Path, repeats: int) -> dict:
    """The median of `repeats` re-ingests, each into its own copy of the first ingest's store (on a
    shared machine one run of 1-2 s varies by a quarter); every run's seconds in `seconds_runs`."""
    runs = []
    for i in range(max(1, repeats)):
        store = work / f"store_reingest{i}"
        shutil.rmtree(store, ignore_errors=True)
        shutil.copytree(work / "store_first", store)
        runs.append(_run("reingest", drop, store))
        shutil.rmtree(store, ignore_errors=True)
    if len({r["prices_hash"] for r in runs}) != 1:
        raise RuntimeError("bench catalogue: the re-ingests into copies of one store stored different prices")
    median = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
    return dict(median, seconds_runs=[r["seconds"] for r in runs])


def _run(variant: str, drop: Path, store: Path) -> dict:
    if variant != "reingest":
        shutil.rmtree(store, ignore_errors=True)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "data_pipelines.catalogue_bench", variant, str(drop), str(store)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"bench variant {variant} failed: {proc.stderr.strip()[-800:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_seconds"] = round(time.perf_counter() - t, 2)
    return result


def child(variant: str, drop: str, store: str) -> None:
    """One variant in this process; prints its result as JSON (peak memory included). `seconds` is the
    pipeline call alone, `import_seconds` the imports before it (the same for every variant)."""
    t0 = time.perf_counter()
    if variant == "pandas":
        import exchange_calendars  # noqa: F401 - imports are timed apart, as for ours
        import pandas  # noqa: F401

        from data_pipelines.catalogue_pandas import pandas_ingest
        imported = time.perf_counter()
        counts = pandas_ingest(Path(drop), Path(store))
        seconds = time.perf_counter() - imported
    else:
        import exchange_calendars  # noqa: F401 - imported lazily by the first session lookup

        from data_pipelines import ingest  # noqa: F401
        imported = time.perf_counter()
        counts, seconds = ours(Path(drop), Path(store), incremental=variant == "reingest")
    use = resource.getrusage(resource.RUSAGE_SELF)
    files = counts.get("files", 0) + counts.get("files_unchanged", 0)
    print(json.dumps(dict(variant=variant, seconds=round(seconds, 2), import_seconds=round(imported - t0, 2),
                          cpu_seconds=round(use.ru_utime + use.ru_stime, 1), peak_rss_mb=round(use.ru_maxrss / 1024),
                          files_per_s=round(files / seconds), rows_per_s=round(counts["rows_read"] / seconds),
                          **counts)))


def ours(drop: Path, store: Path, incremental: bool) -> tuple[dict, float]:
    """`ingest` and its seconds, then the accounting checked against what the store holds."""
    import polars as pl

    from data_pipelines.ingest import Options, ingest
    from data_pipelines.store import content_hash, read_manifest, read_prices, read_quarantine

    t = time.perf_counter()
    rep = ingest(drop, store, Options(exchange="auto", incremental=incremental))
    seconds = time.perf_counter() - t
    prices = read_prices(store)
    counts = dict(files=rep.files, files_unchanged=rep.extra.get("files_unchanged", 0), rows_read=rep.rows_read,
                  rows_stored=rep.rows_stored, rows_quarantined=rep.rows_quarantined, duplicates=rep.duplicates,
                  tickers_changed=rep.tickers_changed, split_seconds=rep.seconds, store_rows=prices.height,
                  store_files=sum(1 for _ in (store / "prices").rglob("*.parquet")),
                  prices_hash=content_hash(prices.with_columns(pl.col("ticker").rank("dense"))))  # codes hash fast
    balanced = rep.rows_read == rep.rows_stored + rep.rows_quarantined + rep.duplicates
    if not incremental:  # a first ingest: every stored row is in the store, every rejected one quarantined
        stored = int(read_manifest(store)["rows"].sum())
        balanced &= prices.height == stored == rep.rows_stored and read_quarantine(store).height == rep.rows_quarantined
    counts["rows_match"] = bool(balanced)
    return counts, seconds


if __name__ == "__main__":
    child(*sys.argv[1:4])
