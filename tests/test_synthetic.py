"""The synthetic market: reproducible, its planted signals survive the ingest, its dirt is accounted for."""
import hashlib
import json

import numpy as np
import polars as pl
import pytest
from omegaconf import OmegaConf

from data_pipelines import ingest, synthetic
from data_pipelines.store import read_exogenous, read_manifest, read_news, read_prices

STRENGTH = dict(price=0.08, exogenous=0.08, calendar=0.05, news=0.3)


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    info = synthetic.generate(out, tickers=12, days=400, seed=3, layout="mixed", strength=STRENGTH,
                              news_rate=0.2)
    store = out / "store"
    cfg = OmegaConf.create(dict(path=str(out / "prices"), store=str(store),
                                exogenous=dict(path=str(out / "macro.csv"), lag_days={"CPI": 45}),
                                news=dict(path=str(out / "news.csv"))))
    assert ingest.run(cfg) == 0
    return out, store, info


def digest(folder):
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*.*")))).hexdigest()


def test_same_seed_same_files(tmp_path):
    a = synthetic.generate(tmp_path / "a", tickers=3, days=60, seed=7, strength=STRENGTH)
    b = synthetic.generate(tmp_path / "b", tickers=3, days=60, seed=7, strength=STRENGTH)
    assert a == b and digest(tmp_path / "a") == digest(tmp_path / "b")
    synthetic.generate(tmp_path / "c", tickers=3, days=60, seed=8, strength=STRENGTH)
    assert digest(tmp_path / "c") != digest(tmp_path / "a")


def test_oracle_reports_every_planted_component(market):
    out, _, info = market
    oracle = json.loads((out / "oracle.json").read_text())["oracle"]
    assert set(oracle) == {"price", "exogenous", "calendar", "news", "all"}
    assert all(oracle[k]["ic"] > 0.02 for k in oracle) and oracle["all"]["ic"] > oracle["news"]["ic"]


def test_ingest_stores_every_row_and_undoes_the_split(market):
    _, store, info = market
    m = read_manifest(store)
    assert m.height == 12 and m["rows"].sum() == 12 * 400 and m["missing_sessions"].sum() == 0
    first = read_prices(store, ["S0000"]).sort("date")
    jumps = np.abs(np.diff(np.log(first["close"].to_numpy())))
    assert jumps.max() < 0.25  # the raw 2:1 split (a 69% log jump) is gone


def test_news_signal_survives_session_assignment(market):
    """Sentiment predicts the return of the session after the assigned one; assigning by the local
    calendar date instead (a common bug: after-close news lands a session early) loses signal."""
    _, store, _ = market
    px = read_prices(store).sort("ticker", "date").with_columns(
        nxt=(pl.col("close").log().diff()).shift(-1).over("ticker"))
    sentiment = (pl.when(pl.col("headline").str.contains("|".join(synthetic.POSITIVE))).then(1)
                 .when(pl.col("headline").str.contains("|".join(synthetic.NEGATIVE))).then(-1).otherwise(0))
    news = read_news(store).with_columns(s=sentiment)

    def ic(key):
        joined = news.join(px, left_on=["ticker", key], right_on=["ticker", "date"]).drop_nulls("nxt")
        return np.corrcoef(joined["s"], joined["nxt"])[0, 1]

    right = ic("session")
    news = news.with_columns(day=pl.col("published_at").dt.convert_time_zone("America/New_York").dt.date())
    wrong = ic("day")
    assert right > 0.15 and right > wrong + 0.05


def test_exogenous_keys_are_known_sessions(market):
    out, store, _ = market
    exo = read_exogenous(store)
    macro = pl.read_csv(out / "macro.csv", try_parse_dates=True)
    lead = exo.filter(pl.col("series") == "LEAD")
    assert lead["date"].to_list() == macro.drop_nulls("LEAD")["DATE"].to_list()  # lag 0: known that session
    cpi = exo.filter(pl.col("series") == "CPI")
    stamps = macro.drop_nulls("CPI")["DATE"]
    assert all((d - s).days >= 45 for d, s in zip(cpi["date"], stamps.tail(cpi.height)))


def test_dirty_market_is_fully_accounted(tmp_path):
    synthetic.generate(tmp_path / "m", tickers=4, days=80, seed=1, dirty=1.0, extras=False, strength=STRENGTH)
    rep = ingest.ingest(tmp_path / "m" / "prices", tmp_path / "s")
    assert (rep.rows_read, rep.rows_stored, rep.duplicates) == (4 * 84, 4 * 80, 4)
    assert rep.reasons == {"conflicting duplicate": 4, "non-positive price": 4, "not a session": 4}
