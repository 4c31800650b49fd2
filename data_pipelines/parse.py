"""Raw text records -> typed rows, or a quarantine reason naming what is wrong with the record.

This is the careful path: every field is kept as text until it is parsed, so a rejected row keeps
its raw values. The fast path in `read.py` sends here only the records it could not parse.
"""
from __future__ import annotations

import csv
import io

import polars as pl

from data_pipelines.formats import PRICE_ALIASES, FileSpec, normalise

NUMERIC = ("open", "high", "low", "close", "adj_close", "volume")
ROW_SCHEMA = dict(file_id=pl.UInt32, line=pl.Int64, ticker=pl.String, date=pl.Date, open=pl.Float64,
                  high=pl.Float64, low=pl.Float64, close=pl.Float64, adj_close=pl.Float64,
                  volume=pl.Float64)
BAD_SCHEMA = dict(file_id=pl.UInt32, line=pl.Int64, reason=pl.String, raw=pl.String)
_HEADER_WORDS = {normalise(k) for k in PRICE_ALIASES}


def split_records(text: str, delimiter: str, first_line: int = 1) -> list[tuple[int, str, list[str]]]:
    """(line number, raw text, fields) of each non-blank record; quoted fields may span lines.
    Text the csv module refuses (a field over its size limit, a stray carriage return) is split
    line by line, without quoting, so each of its lines still gets a reason."""
    out, lines = [], text.splitlines()
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    start = 1
    try:
        for fields in reader:
            end = reader.line_num
            if fields and any(f.strip() for f in fields):
                out.append((start + first_line - 1, "\n".join(lines[start - 1:end]), fields))
            start = end + 1
    except csv.Error:
        out += [(i + first_line - 1, ln, ln.split(delimiter)) for i, ln in enumerate(lines[start - 1:], start)
                if ln.strip()]
    return out


def date_expr(col: pl.Expr, fmt: str) -> pl.Expr:
    """Parse a text date; vendor timestamps ('2024-01-02 00:00:00-05:00') keep their date part."""
    col = col.str.strip_chars()
    col = pl.when(col.str.contains(r"^\d{4}-\d{2}-\d{2}[ T]")).then(col.str.slice(0, 10)).otherwise(col)
    return col.str.to_date(fmt, strict=False)


def records_to_rows(records: list[tuple[int, str, list[str]]], spec: FileSpec, file_id: int,
                    ticker: str | None, upper: bool = True) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Typed rows and quarantined rows (file_id, line, reason, raw) from text records."""
    n = len(spec.header)
    text = {role: [f[i].strip() if i < len(f) else "" for _, _, f in records] for role, i in spec.roles.items()}
    df = pl.DataFrame(dict(line=[r[0] for r in records], raw=[r[1] for r in records],
                           nfields=[len(r[2]) for r in records], **text),
                      schema_overrides={k: pl.String for k in text})
    df = with_reasons(df, spec, n, ticker, upper)
    return split_reasons(df, file_id)


def with_reasons(df: pl.DataFrame, spec: FileSpec, nfields: int, ticker: str | None,
                 upper: bool) -> pl.DataFrame:
    """Add typed columns and `reason`: the first failed parse check, or null."""
    roles = spec.roles
    tick = pl.col("ticker").str.strip_chars() if "ticker" in roles else pl.lit(ticker, pl.String)
    tick = tick.str.to_uppercase() if upper and "ticker" in roles else tick
    typed = [date_expr(pl.col("date"), spec.date_format).alias("_date"), tick.alias("_ticker")]
    typed += [pl.col(c).cast(pl.Float64, strict=False).alias(f"_{c}") for c in NUMERIC if c in roles]
    df = df.with_columns(typed)
    needed = [c for c in ("date", *NUMERIC) if c in roles]
    reason = (pl.when(pl.col("nfields") != nfields).then(pl.lit(f"wrong number of fields (expected {nfields})"))
              .when(pl.col("date").str.to_lowercase().str.replace_all(r"[\s_<>\"'\ufeff-]", "")
                    .is_in(list(_HEADER_WORDS)))
              .then(pl.lit("repeated header"))
              .when(pl.any_horizontal(pl.col(needed).str.contains("\ufffd"))).then(pl.lit("non-UTF-8 bytes"))
              .when(pl.any_horizontal(pl.col(needed) == "")).then(pl.lit("missing value"))
              .when(ticker_invalid(pl.col("_ticker"))).then(pl.lit("invalid ticker"))
              .when(pl.col("_date").is_null()).then(pl.lit(f"unparsable date (expected {spec.date_format})"))
              .when(pl.any_horizontal(pl.col([f"_{c}" for c in needed if c != "date"]).is_null()))
              .then(pl.lit("unparsable number")))
    return df.with_columns(reason.alias("reason"))


def ticker_invalid(t: pl.Expr) -> pl.Expr:
    from data_pipelines.store import MAX_TICKER_LEN

    return (t.is_null() | (t.str.strip_chars() == "") | t.str.contains(r"[\x00-\x1f\x7f]")
            | t.is_in([".", ".."]) | (t.str.len_chars() > MAX_TICKER_LEN))


def split_reasons(df: pl.DataFrame, file_id: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    fid = pl.lit(file_id, pl.UInt32).alias("file_id")
    bad = df.filter(pl.col("reason").is_not_null()).select(fid, "line", "reason", "raw")
    good = df.filter(pl.col("reason").is_null()).select(
        fid, "line", pl.col("_ticker").alias("ticker"), pl.col("_date").alias("date"),
        *[(pl.col(f"_{c}") if f"_{c}" in df.columns else pl.lit(None, pl.Float64)).alias(c) for c in NUMERIC])
    return good.cast(ROW_SCHEMA), bad.cast(BAD_SCHEMA)
