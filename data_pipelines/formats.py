"""Recognise a vendor file from its header: delimiter, column roles, date format, ticker.

Known layouts (any letter case, `<..>` brackets, spaces or underscores):
    Yahoo   Date,Open,High,Low,Close,Adj Close,Volume
    Stooq   Date,Open,High,Low,Close,Volume[,OpenInt]   and the bulk form <TICKER>,<PER>,<DATE>,<TIME>,...
    Parquet the same names as columns
Columns outside the known roles are ignored and listed in the report.

`table_kind` tells the tables of a vendor drop apart by their header: prices, news
(`published_at, ticker, headline`) or exogenous series (wide `date, A, B` or long `series, date, value`).
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

REQUIRED = ("date", "open", "high", "low", "close", "volume")
PRICE_ALIASES = {
    "date": "date", "datetime": "date", "timestamp": "date", "day": "date",
    "open": "open", "o": "open", "high": "high", "h": "high", "low": "low", "l": "low",
    "close": "close", "c": "close", "adjclose": "adj_close", "adjustedclose": "adj_close",
    "volume": "volume", "vol": "volume", "v": "volume", "ticker": "ticker", "symbol": "ticker",
}
UNNAMED = {"", "unnamed:0", "index"}
DELIMITERS = (",", ";", "\t", "|")
DATE_FORMATS = ("%Y-%m-%d", "%Y%m%d", "%Y/%m/%d", "%m/%d/%Y", "%d.%m.%Y", "%d/%m/%Y", "%d-%m-%Y")
EXTENSIONS = (".csv", ".txt", ".tsv", ".parquet", ".pq")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class FileSpec:
    """How to read one file: delimiter, the source column of each role, and its date format."""
    delimiter: str
    header: list[str]
    roles: dict[str, int]                      # role -> column index
    ignored: list[str] = field(default_factory=list)
    date_format: str = "%Y-%m-%d"

    @property
    def signature(self) -> tuple:
        return (self.delimiter, tuple(self.header), self.date_format)


class FormatError(ValueError):
    """The file cannot be read as prices at all (its rows go to quarantine with this reason)."""


class UnreadableFile(FormatError):
    """The file has no lines to quarantine: not text, truncated, or not readable at all."""


def normalise(name: str) -> str:
    return re.sub(r"[\s_<>\"'\ufeff-]", "", name).lower()


def sniff_delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in DELIMITERS}
    best = max(counts, key=counts.get)
    if counts[best] == 0:
        raise FormatError(f"no delimiter in header {header_line[:80]!r} (tried , ; tab |)")
    return best


def parse_header(header_line: str) -> FileSpec:
    """Column roles from a header line; FormatError names what is missing. Memoised: a vendor drop
    of 100,000 files has a handful of distinct headers."""
    spec = _parse_header(header_line)
    return replace(spec, header=list(spec.header), roles=dict(spec.roles), ignored=list(spec.ignored))


@lru_cache(maxsize=1024)
def _parse_header(header_line: str) -> FileSpec:
    delimiter = sniff_delimiter(header_line)
    try:
        header = next(csv.reader([header_line], delimiter=delimiter))
    except csv.Error as e:  # e.g. a carriage return inside the line: not a header
        raise UnreadableFile(f"not a text table ({e})") from None
    roles, ignored = {}, []
    for i, name in enumerate(header):
        role = PRICE_ALIASES.get(normalise(name))
        if role and role not in roles:
            roles[role] = i
        elif not (i == 0 and normalise(name) in UNNAMED):
            ignored.append(name)
    if "date" not in roles and normalise(header[0]) in UNNAMED:
        roles["date"] = 0  # pandas writes its (date) index as an unnamed first column
    return check_roles(FileSpec(delimiter, header, roles, ignored))


def check_roles(spec: FileSpec) -> FileSpec:
    missing = [r for r in REQUIRED if r not in spec.roles]
    if missing:
        raise FormatError(f"unknown columns: missing {', '.join(missing)} in header "
                          f"{spec.delimiter.join(spec.header)[:120]!r}")
    return spec


def header_columns(header_line: str) -> list[str]:
    """The column names of a header line, split on its likeliest delimiter (one column if none)."""
    counts = {d: header_line.count(d) for d in DELIMITERS}
    best = max(counts, key=counts.get)
    parts = header_line.split(best) if counts[best] else [header_line]
    return [c.strip().strip('"').strip() for c in parts]


def table_kind(header: list[str]) -> str:
    """'prices', 'news' or 'exogenous', from column names alone. Any price column (open, close,
    volume, ticker, ...) makes a price table, complete or not, so a price file missing a column is
    rejected as prices rather than stored as series; a file matching nothing is a (rejected) price table."""
    from data_pipelines.exogenous import DATE_NAMES
    from data_pipelines.news import NEWS_ALIASES

    names = [normalise(c) for c in header]
    if {NEWS_ALIASES.get(n) for n in names} >= {"published_at", "headline"}:
        return "news"
    if any(PRICE_ALIASES.get(n, "date") != "date" for n in names):
        return "prices"
    has_date = any(n in DATE_NAMES for n in names) or (bool(names) and names[0] in UNNAMED)
    return "exogenous" if has_date and len(names) >= 2 else "prices"  # long: series, date, value


def infer_date_format(samples: list[str]) -> str:
    """The first format that parses every sample (or the most samples), from DATE_FORMATS."""
    import datetime as dt

    def parses(value: str, fmt: str) -> bool:
        try:
            dt.datetime.strptime(value, fmt)
            return True
        except ValueError:
            return False

    samples = [date_part(s) for s in samples if s and normalise(s) not in PRICE_ALIASES][:50]
    if not samples:
        return DATE_FORMATS[0]
    scores = [(sum(parses(s, f) for s in samples), -i, f) for i, f in enumerate(DATE_FORMATS)]
    return max(scores)[2]


def date_part(value: str) -> str:
    """'2024-01-02 00:00:00-05:00' -> '2024-01-02': vendor timestamps carry the session date first."""
    value = value.strip()
    return value[:10] if len(value) > 10 and value[4:5] == "-" and value[10:11] in (" ", "T") else value


def ticker_from_name(path: Path, pattern: str | None = None, upper: bool = True) -> str:
    """File name without its data extension ('aapl.us.txt' -> 'AAPL.US'); `pattern`'s group 1 if set."""
    name = path.name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    for ext in EXTENSIONS:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    if pattern:
        match = re.search(pattern, name)
        name = match.group(1) if match else name
    return name.upper() if upper else name


def ticker_problem(ticker: str | None) -> str | None:
    """Why `ticker` cannot name a stored series, or None when it can."""
    from data_pipelines.store import MAX_TICKER_LEN

    if ticker is None or not ticker.strip():
        return "empty ticker"
    if len(ticker) > MAX_TICKER_LEN:
        return f"ticker longer than {MAX_TICKER_LEN} characters"
    if _CONTROL.search(ticker) or ticker in (".", "..") or ticker != ticker.strip():
        return "invalid ticker"
    return None
