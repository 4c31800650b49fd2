"""Read a file or a directory tree of vendor files into typed rows plus quarantined rows.

Files that share a header (the common case: a folder of one vendor's CSVs) are parsed by one polars
scan over all of them, in parallel; the ticker and line number of each row come from per-file line
counts. Only the records that scan cannot parse, and the files it cannot take (quotes, bad UTF-8,
ragged lines), go through the careful path in `parse.py`. Both paths give the same rows (tested).

A file that cannot be read (not text, a truncated gzip, no permission, or anything unexpected) gets
a `problem` and no rows; it never stops the other files. A file whose header is a news or exogenous
table gets that `kind` and is left to its own reader (see `drop.py`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from data_pipelines.formats import (
    FileSpec,
    FormatError,
    UnreadableFile,
    header_columns,
    infer_date_format,
    parse_header,
    table_kind,
    ticker_from_name,
    ticker_problem,
)
from data_pipelines.parse import (
    BAD_SCHEMA,
    NUMERIC,
    ROW_SCHEMA,
    date_expr,
    records_to_rows,
    split_records,
    ticker_invalid,
)
from data_pipelines.rawtext import as_text, check_text, digest, file_bytes, raw_bytes, unexpected
from data_pipelines.read_parquet import read_parquet


@dataclass
class Source:
    """One input file: its id (read order), path, ticker from its name, and what went wrong."""
    file_id: int
    path: Path
    ticker: str | None
    problem: str | None = None
    ignored_columns: list[str] = field(default_factory=list)
    kind: str = "prices"       # or 'news' / 'exogenous': a table for another part of the store
    digest: str | None = None  # of its bytes on disk, for the source catalogue (catalogue.py)


@dataclass
class _Text:
    source: Source
    spec: FileSpec
    header_line: int           # 1-based line number of the header
    rows: int                  # lines after the header (blank ones included)
    clean: bool                # UTF-8 without quotes: the fast reader can take it
    plain: bool                # not compressed, no BOM, header on line 1: polars can scan the path
    body: bytes | None = None  # the bytes after the header, when kept


def read_sources(paths: list[Path], ticker_pattern: str | None = None, upper: bool = True,
                 date_format: str | None = None, preread: dict[str, bytes] | None = None
                 ) -> tuple[pl.DataFrame, pl.DataFrame, list[Source]]:
    """(rows, quarantined, sources): rows follow parse.ROW_SCHEMA, quarantined parse.BAD_SCHEMA.
    `preread`: {str(path): bytes on disk} of files already read (catalogue.unchanged), not read again."""
    preread = preread or {}
    sources = [Source(i, p, ticker_from_name(p, ticker_pattern, upper)) for i, p in enumerate(paths)]
    goods, bads, groups = [], [], {}
    for src in sources:
        try:
            if src.path.name.lower().endswith((".parquet", ".pq")):
                good, bad = read_parquet(src, upper, date_format)
                goods.append(good), bads.append(bad)
                continue
            text = _open_text(src, date_format, preread.pop(str(src.path), None))
        except UnreadableFile as e:
            src.problem = str(e)
            continue
        except FormatError as e:
            src.problem = str(e)
            bads.append(_reject_all(src, e))
            continue
        except Exception as e:  # noqa: BLE001 - one file never stops the others
            src.problem = unexpected(e)
            continue
        if text is not None:
            groups.setdefault(_fast_key(text), []).append(text)
    for key, texts in groups.items():
        good, bad = _read_group(texts, key[0], upper)
        goods.append(good), bads.append(bad)
    rows = pl.concat([pl.DataFrame(schema=ROW_SCHEMA), *goods])  # read order within runs; see dedup
    return rows, pl.concat([pl.DataFrame(schema=BAD_SCHEMA), *bads]), sources


def _load(path: Path) -> bytes:
    return file_bytes(path)[0]


def _open_text(src: Source, date_format: str | None, raw: bytes | None = None) -> _Text | None:
    """Header, spec and line count of a text file (`raw`: its bytes, if already read); None (with
    `src.problem`, or a `kind` other than prices) when it has no price rows to read."""
    raw = raw_bytes(src.path) if raw is None else raw
    src.digest = digest(raw)
    data, as_on_disk = as_text(raw, src.path.name)
    bom = data.startswith(b"\xef\xbb\xbf")
    data = data[3:] if bom else data
    lines = data[:65536].split(b"\n", 64)
    k = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if k is None:
        src.problem = "empty file"
        return None
    check_text(data, lines[k].rstrip(b"\r"))
    header = lines[k].decode("utf-8", errors="replace").rstrip("\r")
    start = sum(len(ln) + 1 for ln in lines[:k + 1])                     # offset of the first data line
    if _NONSPACE.search(data, start) is None:
        src.problem = "header only, no data rows"
        return None
    try:
        spec = parse_header(header)
    except UnreadableFile:
        raise
    except FormatError:
        src.kind = table_kind(header_columns(header))
        if src.kind != "prices":
            return None
        raise
    src.ignored_columns = spec.ignored
    spec.date_format = date_format or _date_format(_date_samples(data[start:start + 4096], spec))
    rows = data.count(b"\n", start) + (not data.endswith(b"\n"))
    clean = data.find(b'"', start) < 0 and (data.isascii() or _is_utf8(data))
    small = len(data) <= SMALL_FILE  # parsed from memory with its group: cheaper than one more open
    plain = not bom and k == 0 and as_on_disk and not small
    return _Text(src, spec, k + 1, rows, clean, plain, data[start:] if small else None)


_NONSPACE = re.compile(rb"\S")
_DIGITS = bytes.maketrans(b"0123456789", b"9999999999")
_UNAMBIGUOUS: dict[tuple, str] = {}  # sample shapes (digits as 9) starting with a 4-digit year -> format
SMALL_FILE = 1 << 18  # text files up to this size are kept in memory and parsed in one buffer with their group


def _date_format(samples: list[bytes]) -> str:
    """infer_date_format, remembered for year-first shapes ('9999-99-99'), which parse one way only."""
    shapes = tuple(sorted({v.translate(_DIGITS) for v in samples}))
    if shapes in _UNAMBIGUOUS:
        return _UNAMBIGUOUS[shapes]
    fmt = infer_date_format([v.decode("utf-8", errors="replace") for v in samples])
    if shapes and all(re.match(rb"9999\D?99", sh) for sh in shapes):
        _UNAMBIGUOUS[shapes] = fmt
    return fmt


def _date_samples(body: bytes, spec: FileSpec) -> list[bytes]:
    i, sep = spec.roles["date"], spec.delimiter.encode()
    out = []
    for ln in body[:4096].splitlines()[:20]:
        fields = ln.split(sep)
        if len(fields) > i:
            out.append(fields[i].strip().strip(b'"'))
    return out


def _body(t: _Text) -> bytes:
    """The bytes after the header line."""
    if t.body is None:
        parts = _load(t.source.path).removeprefix(b"\xef\xbb\xbf").split(b"\n", t.header_line)
        return parts[t.header_line] if len(parts) > t.header_line else b""
    return t.body


def _fast_key(t: _Text) -> tuple:
    """Files with equal keys are parsed together; key[0] says whether polars can take them whole."""
    return (t.clean, t.spec.signature, "ticker" in t.spec.roles, t.plain)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _fast_group(texts: list[_Text], upper: bool) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Parse a group's files in one polars call; fall back per file if the row counts do not add up."""
    counts = np.array([t.rows for t in texts], dtype=np.int64)
    try:
        if texts[0].plain:
            df = _polars_read([t.source.path for t in texts], texts[0].spec)
        else:
            df = _polars_read(b"".join(_body(t).removesuffix(b"\n") + b"\n" for t in texts), texts[0].spec)
    except pl.exceptions.PolarsError:
        df = None
    if df is None or df.height != counts.sum():
        if len(texts) == 1:
            return _careful_many(texts, upper)
        parts = [_fast_group([t], upper) for t in texts]
        return pl.concat([p[0] for p in parts]), pl.concat([p[1] for p in parts])
    return _finish_fast(df, texts, counts, upper)


def _polars_read(source: bytes | list[Path], spec: FileSpec) -> pl.DataFrame:
    """The role columns of headerless bytes, or of files (each with its header line) read in parallel."""
    names = [f"c{i}" for i in range(len(spec.header))]
    role_of = {i: r for r, i in spec.roles.items()}
    role_of.setdefault(len(spec.header) - 1, "_last")  # a null there: a short row (wrong field count)
    iso = spec.date_format == "%Y-%m-%d"
    schema = {n: (pl.Float64 if role_of.get(i) in NUMERIC else pl.Date if role_of.get(i) == "date" and iso
                  else pl.String) for i, n in enumerate(names)}
    opts = dict(separator=spec.delimiter, schema=schema, quote_char=None, ignore_errors=True, raise_if_empty=False)
    if isinstance(source, list):
        lf = pl.scan_csv(source, has_header=False, skip_rows=1, **opts)  # skips each file's header
    else:
        lf = pl.scan_csv(source, has_header=False, **opts)
    return lf.select([pl.col(f"c{i}").alias(r) for i, r in sorted(role_of.items())]).collect()


def _finish_fast(df: pl.DataFrame, texts: list[_Text], counts: np.ndarray,
                 upper: bool) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Attach file ids, line numbers and tickers; send rows with any unparsed field to `_reparse`."""
    spec = texts[0].spec
    which = np.repeat(np.arange(len(texts)), counts)                       # (rows,) index into texts
    ids = np.array([t.source.file_id for t in texts], dtype=np.uint32)
    first_row = np.cumsum(counts) - counts
    line = np.arange(len(which)) - first_row[which] + np.array([t.header_line + 1 for t in texts])[which]
    cols = dict(file_id=pl.Series(ids[which]), line=pl.Series(line))
    if "ticker" in spec.roles:
        tick = pl.col("ticker").str.strip_chars()
        cols["ticker"] = tick.str.to_uppercase() if upper else tick
        bad_name = ticker_invalid(pl.col("ticker"))
    else:
        cols["ticker"] = pl.Series([t.source.ticker for t in texts], dtype=pl.String).gather(which)
        bad_ids = [t.source.file_id for t in texts if ticker_problem(t.source.ticker)]
        bad_name = pl.col("file_id").is_in(bad_ids) if bad_ids else pl.lit(False)
    if df.schema["date"] == pl.String:
        cols["date"] = date_expr(pl.col("date"), spec.date_format)
    df = df.with_columns(**cols)
    needed = ["date", *[c for c in NUMERIC if c in spec.roles], *(["_last"] if "_last" in df.columns else [])]
    suspect = pl.any_horizontal(pl.col(needed).is_null()) | bad_name
    shape = [(pl.col(c) if c in df.columns else pl.lit(None, pl.Float64)).alias(c) for c in ROW_SCHEMA]
    flags = df.select(suspect.alias("s"))["s"]
    if not flags.any():
        return df.select(shape).cast(ROW_SCHEMA), pl.DataFrame(schema=BAD_SCHEMA)
    g2, bad = _reparse(df.filter(flags).select("file_id", "line"), {t.source.file_id: t for t in texts}, upper)
    return pl.concat([df.filter(~flags).select(shape).cast(ROW_SCHEMA), g2]), bad


def _reparse(redo: pl.DataFrame, by_id: dict[int, _Text], upper: bool) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Send the records the fast read could not parse through the careful path."""
    goods, bads = [pl.DataFrame(schema=ROW_SCHEMA)], [pl.DataFrame(schema=BAD_SCHEMA)]
    for (fid,), part in redo.group_by("file_id", maintain_order=True):
        t = by_id[fid]
        data = _load(t.source.path)
        lines = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8").split("\n")[t.header_line:]
        records = []
        for ln in part["line"].to_list():
            raw = lines[ln - t.header_line - 1].rstrip("\r")
            records += split_records(raw, t.spec.delimiter, first_line=ln)
        good, bad = records_to_rows(records, t.spec, fid, t.source.ticker, upper)
        goods.append(good), bads.append(bad)
    return pl.concat(goods), pl.concat(bads)


def _read_group(texts: list[_Text], fast: bool, upper: bool) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One group's rows; if that fails, file by file, so only the file that fails is lost."""
    try:
        return _fast_group(texts, upper) if fast else _careful_many(texts, upper)
    except Exception as e:  # noqa: BLE001 - one file never stops the others
        if len(texts) == 1:
            texts[0].source.problem = unexpected(e)
            return pl.DataFrame(schema=ROW_SCHEMA), pl.DataFrame(schema=BAD_SCHEMA)
    parts = [_read_group([t], False, upper) for t in texts]
    return pl.concat([p[0] for p in parts]), pl.concat([p[1] for p in parts])


def _careful_many(texts: list[_Text], upper: bool) -> tuple[pl.DataFrame, pl.DataFrame]:
    goods, bads = [pl.DataFrame(schema=ROW_SCHEMA)], [pl.DataFrame(schema=BAD_SCHEMA)]
    for t in texts:
        text = _body(t).decode("utf-8", errors="replace")
        records = split_records(text, t.spec.delimiter, first_line=t.header_line + 1)
        good, bad = records_to_rows(records, t.spec, t.source.file_id, t.source.ticker, upper)
        goods.append(good), bads.append(bad)
    return pl.concat(goods), pl.concat(bads)


def _reject_all(src: Source, err: FormatError) -> pl.DataFrame:
    """Every data line of a file that cannot be read as prices, quarantined with the file's reason."""
    text = _load(src.path).decode("utf-8", errors="replace").lstrip("\ufeff")
    lines = [(i + 1, ln.rstrip("\r")) for i, ln in enumerate(text.split("\n")) if ln.strip()][1:]
    reason = str(err).split(":")[0]
    return pl.DataFrame(dict(file_id=[src.file_id] * len(lines), line=[i for i, _ in lines],
                             reason=[reason] * len(lines), raw=[ln for _, ln in lines]), schema=BAD_SCHEMA)
