"""`python -m forecast ingest path=<file-or-dir> store=<dir>`: vendor files -> validated store.

Steps: read (formats inferred per file) -> value rules -> exchange sessions -> dedup -> Adj Close
adjustment -> merge with what the store holds -> write (atomic) -> one summary line:

    files=.. rows_read=.. rows_stored=.. rows_quarantined=.. duplicates=.. (+ details)

followed by the count of each quarantine reason. `rows_read = rows_stored + rows_quarantined +
duplicates` always holds. The exit code is 1 only when nothing usable was found.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from data_pipelines import calendars, store as st
from data_pipelines.adjust import adjust
from data_pipelines.dedup import dedup
from data_pipelines.read import discover, read_sources
from data_pipelines.validate import split, value_reason


@dataclass
class Options:
    exchange: str = "XNYS"
    exchanges: dict = field(default_factory=dict)    # ticker -> exchange code
    ticker_pattern: str | None = None                # regex; group 1 of the file stem is the ticker
    upper_tickers: bool = True
    date_format: str | None = None                   # strptime format; inferred per file when None
    mode: str = "merge"                              # merge: new rows win by date; replace: whole history
    max_price: float = 1e9
    max_volume: float = 1e15


@dataclass
class Report:
    files: int = 0
    rows_read: int = 0
    rows_stored: int = 0
    rows_quarantined: int = 0
    duplicates: int = 0
    conflicts: int = 0
    missing_sessions: int = 0
    unchecked: int = 0
    tickers: int = 0
    tickers_changed: int = 0
    reasons: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)      # reason -> "file line N"
    rejected_files: dict = field(default_factory=dict)  # file -> problem
    skipped_files: list = field(default_factory=list)   # not a data file extension
    extra: dict = field(default_factory=dict)         # exogenous / news counts

    def lines(self) -> list[str]:
        head = (f"files={self.files} rows_read={self.rows_read} rows_stored={self.rows_stored} "
                f"rows_quarantined={self.rows_quarantined} duplicates={self.duplicates} "
                f"conflicts={self.conflicts} missing_sessions={self.missing_sessions} "
                f"tickers={self.tickers} tickers_changed={self.tickers_changed}")
        head += "".join(f" {k}={v}" for k, v in self.extra.items())
        out = [head]
        for reason, n in sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0])):
            out.append(f"  quarantined {n}: {reason} (first: {self.examples[reason]})")
        out += [f"  file rejected: {f}: {p}" for f, p in self.rejected_files.items()]
        out += [f"  file skipped (hidden, or not .csv/.txt/.tsv/.parquet): {f}" for f in self.skipped_files]
        if self.unchecked:
            out.append(f"  unchecked {self.unchecked}: dated before their exchange calendar's bound, accepted on weekdays")
        return out


def ingest(path: str | Path, store: str | Path, opts: Options | None = None) -> Report:
    """Read, validate, dedup, adjust and store every price file under `path`."""
    opts = opts or Options()
    store = Path(store)
    if store.exists() and not store.is_dir():
        raise st.StoreError(f"store {store} exists and is not a directory")
    files, skipped = discover(path)
    rows, bad, sources = read_sources(files, opts.ticker_pattern, opts.upper_tickers, opts.date_format)
    rep = Report(files=len(files), rows_read=rows.height + bad.height, skipped_files=[str(p) for p in skipped])
    rep.rejected_files = {str(s.path): s.problem for s in sources if s.problem}
    rows, b_rules = _check_rows(rows, opts)
    rows, rep.duplicates, b_conflicts = dedup(rows)
    rep.conflicts = b_conflicts.height
    quarantined = pl.concat([bad, b_rules, b_conflicts])
    rep.rows_stored, rep.rows_quarantined = rows.height, quarantined.height
    _count_reasons(rep, quarantined, sources)
    assert rep.rows_read == rep.rows_stored + rep.rows_quarantined + rep.duplicates, asdict(rep)
    _write_quarantine(store, quarantined, sources)
    if rows.height:
        _store_prices(store, adjust(rows), opts, rep)
    return rep


def _check_rows(rows: pl.DataFrame, opts: Options) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Value rules, then sessions of each row's exchange: one pass, one filter."""
    why = rows.select(value_reason(opts.max_price, opts.max_volume).alias("r"))["r"]
    exchange = calendars.exchange_expr(opts.exchanges, opts.exchange)
    ok = rows.select("ticker", "date").filter(why.is_null()) if why.null_count() < rows.height else rows
    days = calendars.exchange_sessions(ok, exchange) if ok.height else {}
    return split(rows, pl.coalesce(pl.lit(why), calendars.session_reason(days, exchange)))


def _count_reasons(rep: Report, q: pl.DataFrame, sources) -> None:
    counts = q.group_by("reason").agg(n=pl.len(), file_id=pl.col("file_id").first(), line=pl.col("line").first())
    for reason, n, fid, line in counts.iter_rows():
        rep.reasons[reason] = n
        rep.examples[reason] = f"{sources[fid].path} line {line}"


def _write_quarantine(store: Path, q: pl.DataFrame, sources) -> None:
    names = {s.file_id: str(s.path.resolve()) for s in sources}
    q = q.with_columns(file=pl.col("file_id").replace_strict(names, return_dtype=pl.String))
    st.update_quarantine(store, list(names.values()), q)


def _store_prices(store: Path, rows: pl.DataFrame, opts: Options, rep: Report) -> None:
    """Merge the new rows per ticker with the stored history, then write changed tickers."""
    frames = by_ticker(rows.select("ticker", *st.PRICE_COLUMNS))
    manifest = st.read_manifest(store) if (store / st.MANIFEST).exists() else None
    if manifest is not None and opts.mode == "merge":
        frames, rep.extra["replaced_stored_rows"] = _merge(store, frames, manifest)
    cov = calendars.coverage(frames, opts.exchanges, opts.exchange)
    missing = dict(zip(cov["ticker"], cov["missing_sessions"]))
    rep.missing_sessions = int(cov["missing_sessions"].sum())
    rep.unchecked = int(cov["unchecked"].sum())
    exchanges = dict(zip(cov["ticker"], cov["exchange"]))
    before = {} if manifest is None else dict(zip(manifest["ticker"], manifest["content_hash"]))
    new = st.write_prices(store, frames, exchanges, missing)
    after = dict(zip(new["ticker"], new["content_hash"]))
    rep.tickers = len(frames)
    rep.tickers_changed = sum(before.get(t) != after[t] for t in frames)


def by_ticker(rows: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """ticker -> its rows sorted by date (without the ticker column). Rows in one run per ticker
    (the usual case after dedup) are sliced without copying; otherwise partitioned."""
    rows = rows.rechunk() if rows.n_chunks() > 16 else rows  # a slice costs O(chunks)
    tick = rows["ticker"]
    starts = np.flatnonzero((tick != tick.shift(1)).fill_null(True).to_numpy())
    body = rows.drop("ticker")
    if len(starts) == tick.n_unique():
        ends = np.r_[starts[1:], rows.height]
        frames = {tick[int(a)]: body.slice(int(a), int(b - a)) for a, b in zip(starts, ends)}
    else:
        frames = {t: df.drop("ticker") for (t,), df in rows.partition_by("ticker", as_dict=True).items()}
    return {t: df if df["date"].is_sorted() else df.sort("date") for t, df in frames.items()}


def _merge(store: Path, frames: dict[str, pl.DataFrame], manifest: pl.DataFrame) -> tuple[dict, int]:
    """Stored rows on dates the new data lacks are kept; on shared dates the new rows win.
    Returns the merged frames and the number of stored rows whose values were replaced."""
    stored = dict(zip(manifest["ticker"], manifest["file"]))
    hashes = dict(zip(manifest["ticker"], manifest["content_hash"]))
    out, replaced = {}, 0
    for t, df in frames.items():
        if t in stored and st.content_hash(df) != hashes[t]:
            old = pl.read_parquet(store / stored[t]).select(st.PRICE_COLUMNS).cast(df.schema)
            shared = old.join(df, on="date", how="semi").height
            replaced += shared - old.join(df, on=st.PRICE_COLUMNS, how="semi").height
            df = pl.concat([old.join(df, on="date", how="anti"), df]).sort("date")
        out[t] = df
    return out, replaced


def run(cfg) -> int:
    """Entry point for `python -m forecast ingest`; prints the summary and returns the exit code."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True)
    if not c.get("path") and not (c.get("exogenous") or {}).get("path") and not (c.get("news") or {}).get("path"):
        raise st.StoreError("nothing to ingest: give path=<file-or-dir> (and/or exogenous.path=, news.path=)")
    opts = Options(**{k: c[k] for k in Options.__dataclass_fields__ if k in c and c[k] is not None})
    opts.exchanges = parse_exchanges(opts.exchanges)
    if opts.mode not in ("merge", "replace"):
        raise st.StoreError(f"mode: {opts.mode!r} is not merge or replace")
    rep = ingest(c["path"], c["store"], opts) if c.get("path") else Report()
    usable = rep.rows_stored
    usable += _side_tables(c, rep, opts)
    for line in rep.lines():
        print(line)
    if c.get("report"):
        Path(c["report"]).write_text(json.dumps(asdict(rep), indent=1, default=str))
    return 0 if usable else 1


def parse_exchanges(value) -> dict[str, str]:
    """Per-ticker exchanges from a mapping or a list of 'TICKER:CODE' strings."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    out = {}
    for item in value or []:
        ticker, sep, code = str(item).rpartition(":")
        if not sep or not ticker or not code:
            raise st.StoreError(f"exchanges: {item!r} is not TICKER:CODE (e.g. 7203.T:XTKS)")
        out[ticker] = code
    return out


def _side_tables(c: dict, rep: Report, opts: Options) -> int:
    """Ingest exogenous series and news when their paths are given; returns rows stored."""
    n = 0
    if (c.get("exogenous") or {}).get("path"):
        from data_pipelines.exogenous import ingest_exogenous
        e = c["exogenous"]
        rep.extra["exogenous_rows"] = n_e = ingest_exogenous(_files(e["path"]), c["store"], e.get("lag_days") or {},
                                                            opts.exchange)
        n += n_e
    if (c.get("news") or {}).get("path"):
        from data_pipelines.news import ingest_news
        nw = c["news"]
        rep.extra["news_rows"] = n_n = sum(ingest_news(f, c["store"], opts.exchange, nw.get("timezone"))
                                           for f in _files(nw["path"]))
        n += n_n
    return n


def _files(path: str) -> list[Path]:
    """A file, or the visible files under a folder, sorted."""
    p = Path(path)
    if not p.exists():
        raise st.StoreError(f"path {p} does not exist")
    return sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")) if p.is_dir() else [p]
