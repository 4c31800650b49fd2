"""`python -m forecast ingest path=<file-or-dir> store=<dir>`: vendor files -> validated store.

Steps: read (formats inferred per file) -> value rules -> exchange sessions -> dedup -> Adj Close
adjustment -> merge with what the store holds -> write (atomic) -> one summary line:

    files=.. rows_read=.. rows_stored=.. rows_quarantined=.. duplicates=.. (+ details)

followed by the count of each quarantine reason, each ticker's exchange and how well its dates fit
it (`exchanges.py`), and every file rejected or skipped with its reason. `rows_read = rows_stored +
rows_quarantined + duplicates` always holds. A folder may be a whole vendor drop: news and exogenous
tables in it are told apart by their headers and stored as such (`drop.py`). The exit code is 1 only
when nothing usable was found. With `incremental` (the CLI's default) only the files the store's
source catalogue lacks or has otherwise are read (`catalogue.py`); `files_unchanged=` counts the
others. The last summary line splits the time: listing, reading, validating, dedup, writing.
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl

from data_pipelines import calendars, catalogue, exchanges, listings, segments
from data_pipelines import store as st
from data_pipelines.adjust import adjust
from data_pipelines.dedup import dedup
from data_pipelines.drop import LAG_FILE, folder_listing, listing, side_tables
from data_pipelines.merge import merge_stored
from data_pipelines.read import read_sources
from data_pipelines.validate import split, value_reason


@dataclass
class Options:
    exchange: str = "auto"                           # a code for every ticker, or auto: see exchanges.py
    exchanges: dict = field(default_factory=dict)    # ticker -> exchange code
    ticker_pattern: str | None = None                # regex; group 1 of the file stem is the ticker
    upper_tickers: bool = True
    date_format: str | None = None                   # strptime format; inferred per file when None
    mode: str = "merge"                              # merge: new rows win by date; replace: whole history
    max_price: float = 1e9
    max_volume: float = 1e15
    wait: bool = True                                # another ingest is writing the store: wait (else exit 2)
    incremental: bool = False                        # read only new or changed files (catalogue.py); CLI default true
    listing: str = "changed"                         # or full: see listings.py


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
    skipped_files: dict = field(default_factory=dict)   # file or folder -> why it was not read
    side_files: dict = field(default_factory=dict)    # 'news' / 'exogenous' -> files of that table
    exchanges: list = field(default_factory=list)     # summary lines: exchange, source and fit per ticker
    extra: dict = field(default_factory=dict)         # exogenous / news counts
    seconds: dict = field(default_factory=dict)       # listing, reading, validating, dedup, writing

    @contextmanager
    def timed(self, step: str):
        start = time.perf_counter()
        yield
        self.seconds[step] = round(self.seconds.get(step, 0.0) + time.perf_counter() - start, 3)

    def lines(self) -> list[str]:
        head = (f"files={self.files} rows_read={self.rows_read} rows_stored={self.rows_stored} "
                f"rows_quarantined={self.rows_quarantined} duplicates={self.duplicates} "
                f"conflicts={self.conflicts} missing_sessions={self.missing_sessions} "
                f"tickers={self.tickers} tickers_changed={self.tickers_changed}")
        head += "".join(f" {k}={v}" for k, v in self.extra.items())
        out = [head]
        for reason, n in sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0])):
            out.append(f"  quarantined {n}: {reason} (first: {self.examples[reason]})")
        out += self.exchanges
        out += [f"  {kind} table: {f}" for kind, files in self.side_files.items() for f in files]
        out += [f"  file rejected: {f}: {p}" for f, p in self.rejected_files.items()]
        out += [f"  file skipped: {f}: {why}" for f, why in self.skipped_files.items()]
        if self.unchecked:
            out.append(f"  unchecked {self.unchecked}: dated before their exchange calendar's bound, "
                       "accepted on weekdays")
        if self.seconds:
            out.append("  seconds: " + " ".join(f"{k}={v:.2f}" for k, v in self.seconds.items()))
        return out


def ingest(path: str | Path, store: str | Path, opts: Options | None = None) -> Report:
    """Read, validate, dedup, adjust and store every price file under `path` (with
    `opts.incremental` and mode merge, only the files the store's catalogue lacks or has otherwise)."""
    opts = opts or Options()
    with st.writing(store, wait=opts.wait):  # one writer from the first read of the store to its last write
        return _ingest(path, Path(store), opts)


def _ingest(path: str | Path, store: Path, opts: Options) -> Report:
    rep = Report()
    with ThreadPoolExecutor(3) as pool:  # the store's tables, read once beside the listing
        known, held = pool.submit(catalogue.read, store), pool.submit(_held, store)
        with rep.timed("listing"):
            found = _list(path, store, opts, known, rep)
            files = [Path(p) for p in found.listed["path"].to_list()]
        with rep.timed("reading"):
            rows, bad, sources = read_sources(files, opts.ticker_pattern, opts.upper_tickers, opts.date_format,
                                              found.preread)
        rep.files, rep.rows_read, rep.skipped_files = len(files), rows.height + bad.height, found.skipped
        _file_report(rep, found.rejected, found.skipped, sources)
        held = held.result()
        # the new catalogue and the stored rows, beside the checks
        staged = pool.submit(catalogue.stage, store, sources, found.listed, found.kept, found.options,
                             found.catalogue, found.record, found.recorded)
        stored = pool.submit(_stored_rows, store, rows, opts, held[0])
        try:
            _check_and_store(rows, bad, sources, found.listed, store, opts, rep, stored, held)
            with rep.timed("writing"):
                catalogue.publish(store, staged.result())  # last: a killed ingest reads these files again
        finally:
            catalogue.discard(staged)
    return rep


@dataclass
class _Found:
    """What `_list` found: the files to read, and what the new catalogue needs."""
    listed: pl.DataFrame          # drop.LISTING rows of the files to read, in Path order
    kept: pl.DataFrame            # catalogue rows of the unchanged files listed (their stat refreshed)
    preread: dict                 # {path: bytes} of files to read already read (catalogue.unchanged)
    skipped: dict
    rejected: dict
    options: str                  # catalogue.fingerprint of the options
    catalogue: pl.DataFrame | None
    recorded: dict                # the catalogue's listings (listings.py) ...
    record: tuple | None          # ... and this one's (folder, entry), None for a file or the walk


def _list(path: str | Path, store: Path, opts: Options, known: Future, rep: Report) -> _Found:
    """List `path` (after a first listing of a folder, only what changed: listings.py) and, with
    `opts.incremental`, keep only the new and changed files (catalogue.py)."""
    started, options = time.time_ns(), catalogue.fingerprint(opts)
    incremental = opts.incremental and opts.mode == "merge"
    recorded = listings.read(store)
    prior = listings.previous(recorded, path, options, catalogue.RACY_NS) if incremental and opts.listing == "changed" \
        else None
    folders = None
    if Path(path).is_dir():
        def also():
            return listings.read_every_time(known.result(), path, catalogue.ALWAYS_READ)
        listed, skipped, rejected, folders = folder_listing(path, *(prior or (None, None)), also)
    else:
        listed, skipped, rejected = listing(path)
    known = known.result()  # the writer lock is held until the last write: nothing changes it
    kept, preread = pl.DataFrame(schema=catalogue.SCHEMA), {}
    if incremental:
        unlisted = listings.not_listed(known, path, listed) if prior and folders is not None else 0
        listed, kept, preread = catalogue.unchanged(store, listed, options, known)
        rep.extra["files_unchanged"] = kept.height + unlisted
    record = None if folders is None else (os.path.realpath(path), dict(listed_ns=started, options=options,
                                                                         folders=folders))
    return _Found(listed, kept, preread, skipped, rejected, options, known, recorded, record)


def _held(store: Path) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
    """What the store holds before this ingest: its manifest and exchanges table (None if absent)."""
    manifest = st.read_manifest(store) if (store / st.MANIFEST).exists() else None
    return manifest, exchanges.read_table(store)


def _stored_rows(store: Path, rows: pl.DataFrame, opts: Options, manifest: pl.DataFrame | None
                 ) -> pl.DataFrame | None:
    """For an incremental merge (a few files changed, most of their tickers' rows to merge with), the
    stored rows of the tickers read; None otherwise (merge_stored reads those whose content changed).
    Read from `manifest` directly: this ingest holds the writer lock, so no file it names goes away."""
    if not (opts.incremental and opts.mode == "merge" and manifest is not None):
        return None
    known = manifest.filter(pl.col("ticker").is_in(rows["ticker"].unique().implode()))
    return segments.read(store, known) if known.height else None


def _check_and_store(rows: pl.DataFrame, bad: pl.DataFrame, sources, listed: pl.DataFrame, store: Path,
                     opts: Options, rep: Report, stored: Future, held: tuple) -> None:
    """Value rules and sessions, dedup, then the quarantine and the prices written (`stored`: the
    future of `_stored_rows`; `held`: `_held`'s manifest and exchanges table)."""
    with rep.timed("validating"):
        rows, b_rules, table = _check_rows(rows, opts, *held)
    with rep.timed("dedup"):
        rows, rep.duplicates, b_conflicts = dedup(rows)
    rep.conflicts = b_conflicts.height
    quarantined = pl.concat([bad, b_rules, b_conflicts])
    rep.rows_stored, rep.rows_quarantined = rows.height, quarantined.height
    _count_reasons(rep, quarantined, sources)
    assert rep.rows_read == rep.rows_stored + rep.rows_quarantined + rep.duplicates, asdict(rep)
    with rep.timed("writing"):
        _write_quarantine(store, quarantined, listed["real"])
        if rows.height:
            _store_prices(store, adjust(rows), opts, rep, table, held[0], stored.result())


def _file_report(rep: Report, rejected: dict, skipped: dict, sources) -> None:
    rep.rejected_files = {**rejected, **{str(s.path): s.problem for s in sources if s.problem}}
    for s in sources:
        if s.kind != "prices":
            rep.side_files.setdefault(s.kind, []).append(str(s.path))
    if "exogenous" in rep.side_files:  # a lag_days.json next to a macro table is read, not skipped
        rep.skipped_files = {f: w for f, w in skipped.items() if Path(f).name != LAG_FILE}


def _check_rows(rows: pl.DataFrame, opts: Options, manifest: pl.DataFrame | None, earlier: pl.DataFrame | None
                ) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Value rules, then sessions of each row's exchange (decided on the rows that pass the value
    rules): one pass, one filter. Also returns the exchanges table of the tickers (exchanges.SCHEMA).
    `manifest` and `earlier` (the exchanges table) are what the store holds, None if absent."""
    why = rows.select(value_reason(opts.max_price, opts.max_volume).alias("r"))["r"]
    ok = rows.select("ticker", "date")
    ok = ok.filter(why.is_null()) if why.null_count() < rows.height else ok
    mine = pl.col("ticker").is_in(ok["ticker"].unique().implode())  # earlier decisions of these tickers only
    stored = {} if manifest is None else dict(manifest.filter(mine).select("ticker", "exchange").iter_rows())
    earlier = None if earlier is None else earlier.filter(mine)
    table = exchanges.resolve(ok, opts.exchanges, opts.exchange, earlier, stored)
    exchange = calendars.exchange_expr(dict(zip(table["ticker"], table["exchange"])), exchanges.DEFAULT)
    days = calendars.exchange_sessions(ok, exchange) if ok.height else {}
    return *split(rows, pl.coalesce(pl.lit(why), calendars.session_reason(days, exchange))), table


def _count_reasons(rep: Report, q: pl.DataFrame, sources) -> None:
    counts = q.group_by("reason").agg(n=pl.len(), file_id=pl.col("file_id").first(), line=pl.col("line").first())
    for reason, n, fid, line in counts.iter_rows():
        rep.reasons[reason] = n
        rep.examples[reason] = f"{sources[fid].path} line {line}"


def _write_quarantine(store: Path, q: pl.DataFrame, real: pl.Series) -> None:
    """Replace the quarantined rows of the files read (`real`: their resolved paths, in file_id order)."""
    q = q.with_columns(file=real.gather(q["file_id"]))
    st.update_quarantine(store, real.to_list(), q)


def _store_prices(store: Path, rows: pl.DataFrame, opts: Options, rep: Report, table: pl.DataFrame,
                  manifest: pl.DataFrame | None, prefetched: pl.DataFrame | None = None) -> None:
    """Merge the new rows per ticker with the stored history (`manifest`: the store's before this
    ingest; `prefetched`: see merge_stored), then write changed tickers and their exchanges (with how
    well each fits)."""
    rows = rows.select("ticker", *st.PRICE_COLUMNS)
    if manifest is not None and opts.mode == "merge":
        rows, rep.extra["replaced_stored_rows"] = merge_stored(store, rows, manifest, prefetched)
    tickers = rows["ticker"].unique()
    table = table.filter(pl.col("ticker").is_in(tickers.implode()))
    cov = calendars.coverage(rows, dict(zip(table["ticker"], table["exchange"])), exchanges.DEFAULT)
    missing = dict(zip(cov["ticker"], cov["missing_sessions"]))
    rep.missing_sessions = int(cov["missing_sessions"].sum())
    rep.unchecked = int(cov["unchecked"].sum())
    codes = dict(zip(cov["ticker"], cov["exchange"]))
    new = st.write_prices(store, rows, codes, missing)
    exchanges.write_table(store, table)
    rep.exchanges = exchanges.summary(table)
    rep.tickers = len(tickers)
    rep.tickers_changed = _changed(tickers, manifest, new)


def _changed(tickers: pl.Series, before: pl.DataFrame | None, after: pl.DataFrame) -> int:
    """How many of `tickers` have a content hash in the manifest `after` other than in `before`."""
    now = pl.DataFrame({"ticker": tickers}).join(after.select("ticker", "content_hash"), on="ticker")
    if before is None:
        return now.height
    now = now.join(before.select("ticker", old="content_hash"), on="ticker", how="left")
    return now.height - int((now["content_hash"] == now["old"]).sum())


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
    if opts.listing not in listings.MODES:
        raise st.StoreError(f"listing: {opts.listing!r} is not changed or full")
    with st.writing(c["store"], wait=opts.wait):  # one writer from first read to last write
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
    """Ingest the exogenous and news tables given by exogenous.path / news.path and those found in
    the drop, on the exchange most of the store's tickers trade on (news: each ticker's own);
    returns rows stored."""
    manifest = st.read_manifest(c["store"]) if (Path(c["store"]) / st.MANIFEST).exists() else None
    codes = {} if manifest is None else dict(manifest.select("ticker", "exchange").iter_rows())
    exchange = opts.exchange if opts.exchange.lower() != exchanges.AUTO else _most_common(codes)
    counts, rejected, lines = side_tables(c, rep.side_files, exchange, codes)
    rep.extra.update(counts)
    rep.rejected_files.update(rejected)
    rep.exchanges += lines
    return sum(counts.values())


def _most_common(codes: dict[str, str]) -> str:
    """The exchange of most tickers (XNYS on a tie with it, or when there are none)."""
    counts = {}
    for code in codes.values():
        counts[code] = counts.get(code, 0) + 1
    if not counts:
        return exchanges.DEFAULT
    top = max(counts.values())
    return exchanges.DEFAULT if counts.get(exchanges.DEFAULT) == top else min(k for k, v in counts.items() if v == top)
