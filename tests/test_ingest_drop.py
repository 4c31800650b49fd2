"""A whole vendor drop in one command: prices, exogenous series and news told apart by their headers."""
import datetime as dt

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from data_pipelines import ingest as ing
from data_pipelines import synthetic
from data_pipelines.formats import table_kind
from data_pipelines.store import StoreError, read_exogenous, read_manifest, read_news, read_prices

D = dt.date


@pytest.mark.parametrize("header, kind", [
    ("Date,Open,High,Low,Close,Adj Close,Volume", "prices"),
    ("<TICKER>,<PER>,<DATE>,<TIME>,<OPEN>,<HIGH>,<LOW>,<CLOSE>,<VOL>", "prices"),
    ("Date,Close", "prices"),                 # a price column: an incomplete price table, not a series
    ("foo,bar,baz", "prices"),                # nothing known: rejected as prices (unknown columns)
    ("published_at,ticker,headline", "news"),
    ("Date,Title", "news"),
    ("DATE,LEAD,CPI", "exogenous"),
    ("observation_date,VIXCLS", "exogenous"),
    ("series,date,value", "exogenous"),
    (",VIX", "exogenous"),                    # pandas' unnamed date index
    ("Date", "prices"),
])
def test_table_kind_from_the_header(header, kind):
    assert table_kind(header.split(",")) == kind


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthetic.generate(out, tickers=4, days=120, seed=5, layout="mixed", news_rate=0.2,
                       strength=dict(price=0.05, exogenous=0.05, calendar=0.0, news=0.2))
    return out


def test_synth_folder_in_one_command_equals_the_explicit_options(synth, tmp_path, capsys):
    explicit = dict(path=str(synth / "prices"), store=str(tmp_path / "a"),
                    exogenous=dict(path=str(synth / "macro.csv"), lag_days={"CPI": 45}),
                    news=dict(path=str(synth / "news.csv")))
    assert ing.run(OmegaConf.create(explicit)) == 0
    capsys.readouterr()
    assert ing.run(OmegaConf.create(dict(path=str(synth), store=str(tmp_path / "b")))) == 0
    out = capsys.readouterr().out
    a, b = tmp_path / "a", tmp_path / "b"
    assert read_prices(a).equals(read_prices(b)) and read_prices(b).height == 4 * 120
    assert read_exogenous(a).equals(read_exogenous(b)) and set(read_exogenous(b)["series"]) == {"LEAD", "CPI"}
    assert read_news(a).equals(read_news(b)) and read_news(b).height > 0
    cols = ["ticker", "exchange", "rows", "content_hash"]
    assert read_manifest(a).select(cols).equals(read_manifest(b).select(cols))
    assert f"exogenous table: {synth / 'macro.csv'}" in out and f"news table: {synth / 'news.csv'}" in out
    assert "rejected" not in out and "lag_days.json" not in out.split("exogenous lag_days from")[0]


def test_a_side_table_that_cannot_be_read_is_rejected_not_an_error(tmp_path, capsys):
    d = tmp_path / "drop"
    d.mkdir()
    (d / "A.csv").write_text("Date,Open,High,Low,Close,Volume\n2024-01-02,1,2,0.5,1.5,10\n")
    pl.DataFrame({"date": ["2024-01-02"], "X": [[1, 2]]}).write_parquet(d / "macro.parquet")  # a list column
    assert ing.run(OmegaConf.create(dict(path=str(d), store=str(tmp_path / "s")))) == 0
    out = capsys.readouterr().out
    assert [ln for ln in out.splitlines() if "macro.parquet" in ln and "rejected" in ln][0].startswith(
        f"  file rejected: {d / 'macro.parquet'}: unreadable")
    with pytest.raises(StoreError, match="unreadable"):  # named explicitly: an error (exit 2)
        ing.run(OmegaConf.create(dict(path=None, store=str(tmp_path / "t"),
                                      exogenous=dict(path=str(d / "macro.parquet")))))


def test_a_drop_of_only_series_is_usable(tmp_path):
    d = tmp_path / "drop"
    d.mkdir()
    (d / "vix.csv").write_text("Date,VIX\n2024-01-02,13.2\n2024-01-03,14.0\n")
    assert ing.run(OmegaConf.create(dict(path=str(d), store=str(tmp_path / "s")))) == 0
    assert read_exogenous(tmp_path / "s")["series"].to_list() == ["VIX", "VIX"]


def test_news_go_to_the_sessions_of_their_tickers_exchange(tmp_path):
    d = tmp_path / "drop"
    d.mkdir()
    from data_pipelines.calendars import sessions

    days = sessions("XTKS", D(2023, 6, 1))
    days = days.filter((days >= D(2023, 6, 1)) & (days <= D(2024, 1, 31))).to_list()
    (d / "^N225.csv").write_text("Date,Open,High,Low,Close,Volume\n"
                                 + "".join(f"{x},10,11,9,10.5,100\n" for x in days))
    (d / "news.csv").write_text("published_at,ticker,headline\n"
                                "2024-01-05T16:00:00+09:00,^N225,after the Tokyo close\n"
                                "2024-01-05T10:00:00,,market-wide in Tokyo time\n")
    assert ing.run(OmegaConf.create(dict(path=str(d), store=str(tmp_path / "s")))) == 0
    news = dict(read_news(tmp_path / "s").select("headline", "session").iter_rows())
    # Jan 8 is a Tokyo holiday (Coming of Age Day), a New York session
    assert news == {"after the Tokyo close": D(2024, 1, 9), "market-wide in Tokyo time": D(2024, 1, 5)}


_cells = st.lists(st.sampled_from(["2024-01-02", "2024-01-03T18:00:00-05:00", "13.5", "x", ",", "\n", '"', "\r",
                                   "\x00", "AAPL", "", " ", "1e400", ".", "\xe9"]), max_size=30)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["published_at,ticker,headline\n", "date,VIX,CPI\n", "series,date,value\n"]), _cells)
def test_random_side_tables_in_a_drop_never_stop_it(tmp_path_factory, header, cells):
    d = tmp_path_factory.mktemp("drop")
    (d / "A.csv").write_text("Date,Open,High,Low,Close,Volume\n2024-01-02,1,2,0.5,1.5,10\n")
    (d / "side.csv").write_bytes((header + "".join(cells)).encode("utf-8", errors="replace"))
    assert ing.run(OmegaConf.create(dict(path=str(d), store=str(d / "s")))) == 0


def test_a_synth_drop_ingested_in_one_command_trains_the_modality_ablation(synth, tmp_path):
    """`synth` -> `ingest path=<synth folder>` -> `train experiment=modality_ablation data.store=<it>`."""
    from hydra import compose, initialize_config_dir

    from conftest import CONF, TINY
    from forecast.training.train import train

    store = tmp_path / "store"
    assert ing.run(OmegaConf.create(dict(path=str(synth), store=str(store)))) == 0
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=modality_ablation", f"data.store={store}", *TINY,
                                          "data.window=8", "data.batch_size=64",
                                          f"logger.tracking_uri=sqlite:///{tmp_path}/m.db",
                                          f"trainer.default_root_dir={tmp_path}/ckpt"])
    assert train(cfg) > 0  # a finite validation loss: every modality (price, calendar, exogenous, news) was read
