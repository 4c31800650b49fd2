"""Parquet price tables: column roles from their names, as for a text header (`formats.py`).

A Parquet file whose columns are a news or exogenous table is told apart from its schema alone, so
it is read once, by its own reader.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from data_pipelines.formats import (
    PRICE_ALIASES,
    FileSpec,
    FormatError,
    check_roles,
    infer_date_format,
    normalise,
    table_kind,
)
from data_pipelines.parse import BAD_SCHEMA, ROW_SCHEMA, split_reasons, with_reasons
from data_pipelines.rawtext import unexpected

if TYPE_CHECKING:
    from data_pipelines.read import Source


def read_parquet(src: Source, upper: bool, date_format: str | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rows of a Parquet price table. Unreadable, or a news or exogenous table (told from its schema,
    without reading it): no rows, with `src.problem` or `src.kind` set; other columns: every row
    quarantined as unknown columns."""
    none = pl.DataFrame(schema=ROW_SCHEMA), pl.DataFrame(schema=BAD_SCHEMA)
    try:
        names = list(pl.read_parquet_schema(src.path))
        if _parquet_spec(names, quiet=True) is None and table_kind(names) != "prices":
            src.kind = table_kind(names)
            return none
        raw = pl.read_parquet(src.path)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a file-level problem
        src.problem = f"unreadable Parquet: {str(e).splitlines()[0][:120] if str(e) else type(e).__name__}"
        return none
    try:
        return _parquet_rows(src, raw, upper, date_format)
    except Exception as e:  # noqa: BLE001 - e.g. nested columns that do not cast to text
        src.problem = unexpected(e)
        return none


def _parquet_spec(names: list[str], quiet: bool = False) -> FileSpec | None:
    """The price roles of Parquet columns `names`; a missing one raises FormatError (None if `quiet`)."""
    roles = {}
    for i, name in enumerate(names):
        role = PRICE_ALIASES.get(normalise(name))
        if role and role not in roles:
            roles[role] = i
    try:
        return check_roles(FileSpec(",", names, roles, [c for c in names if normalise(c) not in PRICE_ALIASES]))
    except FormatError:
        if quiet:
            return None
        raise


def _parquet_rows(src: Source, raw: pl.DataFrame, upper: bool,
                  date_format: str | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    try:
        spec = _parquet_spec(raw.columns)
    except FormatError as e:
        src.problem = str(e)
        bad = raw.select(file_id=pl.lit(src.file_id, pl.UInt32), line=pl.int_range(1, raw.height + 1, dtype=pl.Int64),
                         reason=pl.lit(str(e).split(":")[0]),
                         raw=pl.concat_str(pl.all().cast(pl.String).fill_null(""), separator=","))
        return pl.DataFrame(schema=ROW_SCHEMA), bad.cast(BAD_SCHEMA)
    roles = spec.roles
    src.ignored_columns = spec.ignored
    text = raw.select([pl.col(raw.columns[i]).cast(pl.String).alias(r) for r, i in roles.items()])
    spec.date_format = date_format or infer_date_format(text["date"].drop_nulls().head(50).to_list())
    df = text.with_columns(line=pl.int_range(1, raw.height + 1, dtype=pl.Int64),
                           raw=pl.concat_str(pl.col(list(roles)).fill_null(""), separator=","),
                           nfields=pl.lit(len(spec.header)), **{r: pl.col(r).fill_null("") for r in roles})
    return split_reasons(with_reasons(df, spec, len(spec.header), src.ticker, upper), src.file_id)
