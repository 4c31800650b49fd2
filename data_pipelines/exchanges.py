"""Which exchange's sessions each ticker's dates are checked against, and how well they fit.

A ticker's exchange comes from the first of these that applies (its `exchange_source`):
    explicit  `exchanges=[7203.T:XTKS]`, else `exchange=<code>` for every ticker (unless `auto`), else
              a code set explicitly by an earlier ingest of the same store
    suffix    its Yahoo or Stooq suffix: 7203.T XTKS, BP.L XLON, BBCA.JK XIDX, AAPL.US XNYS, ...
    symbol    a known index symbol: ^N225 XTKS, ^JKSE XIDX, ^FTSE XLON, ^GSPC XNYS, ...
    fit       with at least MIN_FIT_DATES dates, the major exchange whose sessions fit its dates best
    (earlier) too few dates to fit: the exchange (and source) an earlier ingest chose for it, or
    stored    the exchange the manifest has for it (a store written before exchanges.parquet existed)
    default   XNYS
Fit, per ticker and calendar: `dates_in_sessions` is the share of the ticker's distinct dates that
are sessions; `sessions_covered` the share of the calendar's sessions from the first to the last of
those dates that the ticker has. The score is their harmonic mean; on a tie the earlier candidate
wins (XNYS first). When XNYS fits to NEAR_PERFECT both ways it is chosen without building the other
calendars (and there is no runner-up). Calendars that cannot be evaluated before a bound (XTKS:
1997) count weekdays before it as sessions, as the session rule does. 24/7 and 24/5 (crypto, FX)
are never guessed: give them explicitly.

The store's exchanges.parquet (SCHEMA) keeps, per ticker, the choice, its source, both numbers for
the chosen calendar and, after a fit, for the runner-up, as measured by the ingest that last wrote it.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl

from data_pipelines import calendars
from data_pipelines import store as st

TABLE = "exchanges.parquet"  # in the store: one SCHEMA row per stored ticker
AUTO = "auto"
DEFAULT = "XNYS"
MIN_FIT_DATES = 40
NEAR_PERFECT = 0.995
# The major exchanges a fit chooses among, XNYS first (it wins ties). Not XKRX: building its calendar
# alone takes seconds (Korean tickers are found by name: .KS, .KQ, ^KS11).
CANDIDATES = ("XNYS", "XTSE", "XMEX", "BVMF", "XLON", "XETR", "XPAR", "XAMS", "XSWX", "XMIL", "XMAD", "XSTO",
              "XJSE", "XTKS", "XHKG", "XSHG", "XTAI", "XBOM", "XSES", "XIDX", "XKLS", "XBKK", "XASX", "XNZE")
SUFFIXES = {  # Yahoo, then Stooq (.US .UK .JP .DE .HK .PL .HU), suffixes -> exchange-calendars code
    "T": "XTKS", "L": "XLON", "IL": "XLON", "HK": "XHKG", "JK": "XIDX", "DE": "XETR", "F": "XFRA",
    "DU": "XDUS", "HM": "XHAM", "SG": "XSTU", "PA": "XPAR", "AS": "XAMS", "BR": "XBRU", "LS": "XLIS",
    "MC": "XMAD", "MI": "XMIL", "SW": "XSWX", "VI": "XWBO", "ST": "XSTO", "CO": "XCSE", "HE": "XHEL",
    "OL": "XOSL", "IC": "XICE", "IR": "XDUB", "AT": "ASEX", "WA": "XWAR", "PR": "XPRA", "BD": "XBUD",
    "IS": "XIST", "ME": "XMOS", "TO": "XTSE", "V": "XTSX", "CN": "XTSE", "NE": "XTSE", "AX": "XASX",
    "NZ": "XNZE", "KS": "XKRX", "KQ": "XKRX", "SS": "XSHG", "SZ": "XSHG", "NS": "XBOM", "BO": "XBOM",
    "SA": "BVMF", "MX": "XMEX", "BA": "XBUE", "SN": "XSGO", "LM": "XLIM", "CL": "XBOG", "SI": "XSES",
    "KL": "XKLS", "BK": "XBKK", "TW": "XTAI", "TWO": "XTAI", "JO": "XJSE", "TA": "XTAE", "SR": "XSAU",
    "PS": "XPHS", "RG": "XRIS", "TL": "XTAL", "VS": "XLIT", "KA": "XKAR",
    "US": "XNYS", "UK": "XLON", "JP": "XTKS", "PL": "XWAR", "HU": "XBUD",
}
SYMBOLS = {  # index symbols (Yahoo, and Stooq's where they differ) -> the exchange whose sessions they follow
    "^GSPC": "XNYS", "^SPX": "XNYS", "^DJI": "XNYS", "^NYA": "XNYS", "^RUT": "XNYS", "^VIX": "XNYS",
    "^OEX": "XNYS", "^IXIC": "XNAS", "^NDX": "XNAS", "^NDQ": "XNAS", "^N225": "XTKS", "^NKX": "XTKS",
    "^TOPX": "XTKS", "^JKSE": "XIDX", "^FTSE": "XLON", "^UKX": "XLON", "^FTMC": "XLON", "^FTAS": "XLON",
    "^GDAXI": "XETR", "^DAX": "XETR", "^MDAXI": "XETR", "^TECDAX": "XETR", "^HSI": "XHKG", "^HSCE": "XHKG",
    "^FCHI": "XPAR", "^CAC": "XPAR", "^STOXX50E": "XEUR", "^STOXX": "XEUR", "^SX5E": "XEUR", "^AEX": "XAMS",
    "^IBEX": "XMAD", "^SSMI": "XSWX", "^SMI": "XSWX", "^BFX": "XBRU", "^ATX": "XWBO", "^OMX": "XSTO",
    "^OMXS30": "XSTO", "^OMXC25": "XCSE", "^OMXH25": "XHEL", "^OSEAX": "XOSL", "^ISEQ": "XDUB",
    "^XU100": "XIST", "^AXJO": "XASX", "^AORD": "XASX", "^NZ50": "XNZE", "^GSPTSE": "XTSE", "^KS11": "XKRX",
    "^KQ11": "XKRX", "^KOSPI": "XKRX", "^BSESN": "XBOM", "^NSEI": "XBOM", "^NSEBANK": "XBOM", "^TWII": "XTAI",
    "^STI": "XSES", "^KLSE": "XKLS", "^SET": "XBKK", "^BVSP": "BVMF", "^MXX": "XMEX", "^MERV": "XBUE",
    "^IPSA": "XSGO", "^SSEC": "XSHG", "^SHC": "XSHG", "000001.SS": "XSHG", "^J203": "XJSE", "^TA125": "XTAE",
}
SCHEMA = dict(ticker=pl.String, exchange=pl.String, exchange_source=pl.String, dates=pl.Int64,
              dates_in_sessions=pl.Float64, sessions_covered=pl.Float64, runner_up=pl.String,
              runner_up_dates_in_sessions=pl.Float64, runner_up_sessions_covered=pl.Float64)


def from_name(ticker: str) -> tuple[str, str] | None:
    """(code, 'symbol' or 'suffix') when the ticker's name says where it trades, else None."""
    t = ticker.strip().upper()
    if t in SYMBOLS:
        return SYMBOLS[t], "symbol"
    head, dot, suffix = t.rpartition(".")
    if dot and head and suffix in SUFFIXES:
        return SUFFIXES[suffix], "suffix"
    return None


def resolve(dates: pl.DataFrame, explicit: dict[str, str], exchange: str, earlier: pl.DataFrame | None,
            stored: dict[str, str]) -> pl.DataFrame:
    """One SCHEMA row per ticker of `dates` (ticker, date). `explicit` maps tickers to codes, `exchange`
    is a code for all the others or 'auto'; `earlier` is the store's previous table (or None) and
    `stored` its manifest's ticker -> exchange."""
    prior = {t: (code, "stored") for t, code in stored.items()}
    if earlier is not None:
        prior.update({t: (c, src) for t, c, src in earlier.select("ticker", "exchange", "exchange_source").iter_rows()})
    tickers = dates["ticker"].unique().sort().to_list()
    choice = _named(tickers, explicit, exchange, prior)
    unnamed = [t for t in tickers if t not in choice]
    codes = [DEFAULT, *(c for c, _ in choice.values()), *(prior[t][0] for t in unnamed if t in prior)]
    stats = fit_stats(dates, list(dict.fromkeys(codes)))
    unsure = [t for t in unnamed if stats["n"][t] >= MIN_FIT_DATES and not _near_perfect(stats, t)]
    if unsure:  # building every candidate calendar costs about a second: only when XNYS does not fit
        more = fit_stats(dates.filter(pl.col("ticker").is_in(unsure)), [c for c in CANDIDATES if c != DEFAULT])
        for key in ("p", "r"):
            stats[key].update(more[key])
    rows = [_row(t, *choice[t], stats) for t in tickers if t in choice]
    rows += [_fitted(t, stats, prior.get(t)) for t in unnamed]
    return pl.DataFrame(rows, schema=SCHEMA, orient="row").sort("ticker")


def _named(tickers: list[str], explicit: dict[str, str], exchange: str, prior: dict) -> dict[str, tuple[str, str]]:
    """ticker -> (code, source) for the tickers whose exchange is given or named; the others need a fit."""
    auto = exchange.strip().lower() == AUTO
    out = {}
    for t in tickers:
        if t in explicit or not auto:
            out[t] = explicit.get(t, exchange), "explicit"
        elif prior.get(t, ("", ""))[1] == "explicit":
            out[t] = prior[t]
        elif (named := from_name(t)) is not None:
            out[t] = named
    return out


def _row(ticker: str, code: str, source: str, stats: dict, runner_up: str | None = None) -> tuple:
    p, r = stats["p"].get((ticker, code), 0.0), stats["r"].get((ticker, code), 0.0)
    q = (stats["p"].get((ticker, runner_up)), stats["r"].get((ticker, runner_up))) if runner_up else (None, None)
    return ticker, code, source, stats["n"][ticker], p, r, runner_up, *q


def _near_perfect(stats: dict, ticker: str) -> bool:
    """XNYS fits within NEAR_PERFECT both ways: no other candidate can fit markedly better (the
    closest, XTSE, differs on about 2% of sessions), so the others need not be built."""
    return min(stats["p"][ticker, DEFAULT], stats["r"][ticker, DEFAULT]) >= NEAR_PERFECT


def _fitted(ticker: str, stats: dict, prior: tuple[str, str] | None) -> tuple:
    """The best-fitting candidate with enough dates; else the earlier decision, else the default."""
    if stats["n"][ticker] < MIN_FIT_DATES:
        return _row(ticker, *(prior or (DEFAULT, "default")), stats)
    if _near_perfect(stats, ticker):
        return _row(ticker, DEFAULT, "fit", stats)
    scores = []
    for i, code in enumerate(CANDIDATES):
        p, r = stats["p"][ticker, code], stats["r"][ticker, code]
        scores.append((2 * p * r / (p + r) if p + r else 0.0, -i, code))
    best, second = sorted(scores, reverse=True)[:2]
    return _row(ticker, best[2], "fit", stats, runner_up=second[2])


def fit_stats(dates: pl.DataFrame, codes: list[str]) -> dict:
    """{'n': ticker -> distinct dates, 'p' / 'r': (ticker, code) -> dates_in_sessions / sessions_covered}.

    One lookup per calendar over the days the data spans, packed as bits of one integer per day, so
    each row costs one gather whatever the number of calendars; the counting is on (ticker, bits) groups."""
    out = {"n": {}, "p": {}, "r": {}}
    if dates.height == 0:
        return out
    lo, hi = dates["date"].min(), dates["date"].max()
    span = np.arange(np.datetime64(lo, "D"), np.datetime64(hi, "D") + 1)
    day = (dates["date"].cast(pl.Int32).to_numpy() - span[0].astype(np.int64)).astype(np.int64)
    base = dates.select("ticker", "date")
    for first in range(0, len(codes), 63):
        chunk = codes[first:first + 63]
        member = np.stack([_member(code, span) for code in chunk])            # (K, D) bool
        bits = (member.astype(np.int64) << np.arange(len(chunk))[:, None]).sum(0)
        groups = (base.with_columns(mask=pl.Series(bits[day]))
                  .group_by("ticker", "mask").agg(n=pl.col("date").n_unique(), lo=pl.col("date").min(),
                                                  hi=pl.col("date").max()))
        _count(groups, chunk, member, span, out)
    return out


def _count(groups: pl.DataFrame, chunk: list[str], member: np.ndarray, span: np.ndarray, out: dict) -> None:
    """Fill `out` from (ticker, mask) groups: hits and the sessions between the first and last hit."""
    cum = np.cumsum(member, axis=1)
    per = groups.group_by("ticker").agg(
        pl.col("n").sum().alias("n"),
        *[pl.col("n").filter((pl.col("mask") & (1 << k)) != 0).sum().alias(f"h{k}") for k in range(len(chunk))],
        *[pl.col("lo").filter((pl.col("mask") & (1 << k)) != 0).min().alias(f"a{k}") for k in range(len(chunk))],
        *[pl.col("hi").filter((pl.col("mask") & (1 << k)) != 0).max().alias(f"b{k}") for k in range(len(chunk))])
    tickers, n = per["ticker"].to_list(), per["n"].to_numpy()
    out["n"].update(zip(tickers, n.tolist()))
    start = int(span[0].astype(np.int64))
    for k, code in enumerate(chunk):
        hits = per[f"h{k}"].fill_null(0).to_numpy()
        a, b = ((per[f"{x}{k}"].cast(pl.Int64).fill_null(start) - start).to_numpy() for x in "ab")
        in_span = cum[k, b] - cum[k, a] + member[k, a]          # (T,) sessions from first to last hit
        has = hits > 0
        p = np.where(has, hits / n, 0.0)
        r = np.where(has, np.minimum(1.0, hits / np.maximum(in_span, 1)), 0.0)
        keys = [(t, code) for t in tickers]
        out["p"].update(zip(keys, p.tolist()))
        out["r"].update(zip(keys, r.tolist()))


def _member(code: str, span: np.ndarray) -> np.ndarray:
    """(D,) bool: is each day of `span` a session of `code` (weekdays before the calendar's bound)."""
    first = span[0].astype(dt.date)
    days = calendars.sessions(code, first).to_numpy().astype("datetime64[D]")
    at = (days - span[0]).astype(np.int64)                                  # (S,) day offsets in span
    out = np.zeros(len(span), dtype=bool)
    out[at[(at >= 0) & (at < len(span))]] = True  # a scatter: np.isin sorts both sides, 3 ms a calendar
    b = calendars.bound(code)
    if b is not None:
        early = span < np.datetime64(b, "D")
        out[early] = np.is_busday(span[early])
    return out


def summary(table: pl.DataFrame) -> list[str]:
    """Lines for the ingest summary: one per exchange and source (tickers listed when few)."""
    out = []
    for (code, source), g in table.group_by("exchange", "exchange_source", maintain_order=True):
        names = g["ticker"].to_list()
        more = ", ..." if len(names) > 4 else ""
        who = names[0] if len(names) == 1 else f"{len(names)} tickers ({', '.join(names[:4])}{more})"
        p, r = g["dates_in_sessions"].min(), g["sessions_covered"].min()
        low = "" if len(names) == 1 else "at least "
        line = (f"  exchange {code} for {who} ({source}): {low}{p:.1%} of dates are its sessions, "
                f"{low}{r:.1%} of its sessions in the span present")
        if len(names) == 1 and g["runner_up"][0] is not None:
            line += (f"; next best {g['runner_up'][0]}: {g['runner_up_dates_in_sessions'][0]:.1%}, "
                     f"{g['runner_up_sessions_covered'][0]:.1%}")
        out.append(line)
    for t, code, p in table.filter(pl.col("dates_in_sessions") < 0.9).select("ticker", "exchange",
                                                                              "dates_in_sessions").iter_rows():
        out.append(f"  warning: only {p:.0%} of {t}'s dates are {code} sessions; the others are quarantined "
                   f"(if it trades on other days, give exchanges=[{t}:<code>], e.g. 24/7 or 24/5)")
    return out


def read_table(store: str | Path) -> pl.DataFrame | None:
    path = Path(store) / TABLE
    return pl.read_parquet(path) if path.exists() else None


def write_table(store: str | Path, table: pl.DataFrame) -> bool:
    """Replace the rows of `table`'s tickers in the store's table (atomically; not when unchanged)."""
    store = Path(store)
    with st.writing(store):
        old = read_table(store)
        new = table.cast(SCHEMA)
        if old is not None:
            new = pl.concat([old.cast(SCHEMA).filter(~pl.col("ticker").is_in(table["ticker"].implode())), new])
        new = new.sort("ticker")
        if old is not None and old.equals(new):
            return False
        st.write_atomic(new, store / TABLE)
        return True
