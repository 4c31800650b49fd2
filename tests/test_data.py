"""The data module never looks ahead: splits are disjoint with a purge gap; windows and normalisation
use only the past (and the training period)."""
from datetime import date

import numpy as np
import polars as pl
import pytest
import torch

from data_pipelines.store import read_prices, write_prices
from forecast.data.market import FEATURES, MarketData, add_target, price_features
from forecast.errors import ConfigError


def _copy_store(tmp_path, mutate_after: date | None = None, seed: int = 0):
    """The sample store, with every price after `mutate_after` replaced by random (valid) values."""
    prices = read_prices("data/sample")
    if mutate_after is not None:
        rng = np.random.default_rng(seed)
        late = pl.col("date") > mutate_after
        noise = pl.Series(rng.uniform(0.5, 2.0, prices.height))
        prices = prices.with_columns(
            *[pl.when(late).then(pl.col(c) * noise).otherwise(pl.col(c)).alias(c) for c in
              ["open", "high", "low", "close", "volume"]])
        prices = prices.with_columns(high=pl.max_horizontal("open", "high", "low", "close"),
                                     low=pl.min_horizontal("open", "high", "low", "close"))
    frames = {t: prices.filter(pl.col("ticker") == t).drop("ticker") for t in prices["ticker"].unique()}
    write_prices(tmp_path / "store", frames)
    return str(tmp_path / "store")


def _dm(store, **kw):
    dm = MarketData(store, tickers=None, window=16, horizon=kw.pop("horizon", 1), val_start="2009-01-01",
                    test_start="2011-01-01", **kw)
    dm.setup()
    return dm


@pytest.mark.parametrize("horizon", [1, 5])
def test_splits_are_disjoint_ordered_and_purged(horizon):
    dm = _dm("data/sample", horizon=horizon)
    f = dm.frame.with_columns(pos=pl.int_range(pl.len()).over("ticker"))
    for ticker in f["ticker"].unique():
        t = f.filter(pl.col("ticker") == ticker)
        pos = {s: t.filter(pl.col("split") == s)["pos"] for s in ("train", "val", "test")}
        dates = {s: t.filter(pl.col("split") == s)["date"] for s in ("train", "val", "test")}
        if len(pos["train"]) and len(pos["val"]):
            assert pos["train"].max() + horizon < pos["val"].min()  # the last train label ends before val
            assert dates["train"].max() < dates["val"].min()
        if len(pos["val"]) and len(pos["test"]):
            assert pos["val"].max() + horizon < pos["test"].min()
    # the label of every train anchor is realised before validation starts
    train = f.filter(pl.col("split") == "train")
    label_dates = f.select("ticker", "pos", "date").rename({"date": "label_date"})
    joined = train.with_columns(pl.col("pos") + horizon).join(label_dates, on=["ticker", "pos"])
    assert joined.height == train.height and joined["label_date"].max() < date(2009, 1, 1)


def test_features_and_windows_do_not_look_ahead(tmp_path):
    """Changing every price after date t changes no feature, window or target that ends by t."""
    t = date(2012, 6, 1)  # after the normalisation period, so scaled windows must match exactly
    a, b = _dm("data/sample"), _dm(_copy_store(tmp_path, mutate_after=t))
    assert np.allclose(a.feature_mean, b.feature_mean) and np.allclose(a.feature_std, b.feature_std)
    assert a.frame["date"].equals(b.frame["date"])
    early = (a.frame["date"] <= t).to_numpy()
    assert torch.equal(a.features[early], b.features[early])
    assert not torch.equal(a.features[~early], b.features[~early])  # the mutation did take effect
    for split in ("train", "val", "test"):
        rows = a.anchors[split]
        keep = early[rows.numpy()]
        wa, wb = a.dataset(split)[list(np.flatnonzero(keep))], b.dataset(split)[list(np.flatnonzero(keep))]
        assert torch.equal(wa["x"], wb["x"])


def test_raw_features_are_causal_for_any_cut(tmp_path):
    prices = read_prices("data/sample", ["GOOG"])
    base = price_features(prices)
    for cut in [10, 500, 2000]:
        changed = prices.with_columns(close=pl.when(pl.int_range(pl.len()) > cut).then(1.0)
                                      .otherwise(pl.col("close")))
        f = price_features(changed)
        assert base[: cut + 1].select(FEATURES).equals(f[: cut + 1].select(FEATURES))


def test_target_is_the_forward_log_return():
    prices = read_prices("data/sample", ["SPX"]).sort("date")
    df = add_target(price_features(prices), horizon=3)
    c = prices["close"].to_numpy()
    assert np.allclose(df["target"].to_numpy()[:-3], np.log(c[3:] / c[:-3]))
    assert df["target"][-3:].null_count() == 3


def test_normalisation_is_fitted_on_train_only(tmp_path):
    a, b = _dm("data/sample"), _dm(_copy_store(tmp_path, mutate_after=date(2009, 6, 1)))
    assert np.allclose(a.feature_mean, b.feature_mean)
    assert a.target_std == pytest.approx(b.target_std)


def test_unseen_tickers_share_id_zero(tmp_path):
    prices = read_prices("data/sample")
    frames = {t: prices.filter(pl.col("ticker") == t).drop("ticker") for t in ["SPX", "GOOG"]}
    frames["NEW"] = frames["SPX"].filter(pl.col("date") >= date(2010, 1, 1))  # starts after train
    write_prices(tmp_path / "s", frames)
    dm = _dm(str(tmp_path / "s"))
    assert dm.vocab == ["GOOG", "SPX"]
    ids = dm.ticker_ids[torch.tensor((dm.frame["ticker"] == "NEW").to_numpy())]
    assert ids.unique().tolist() == [0]


@pytest.mark.parametrize("kw,key", [(dict(window=1), "window"), (dict(horizon=0), "horizon"),
                                    (dict(horizon=2, purge=1), "purge"), (dict(batch_size=0), "batch_size"),
                                    (dict(exog_level_window=2), "exog_level_window")])
def test_bad_values_name_their_key(kw, key):
    with pytest.raises(ConfigError) as e:
        MarketData("data/sample", **kw)
    assert e.value.key == key


def test_split_dates_out_of_range_name_the_key():
    dm = MarketData("data/sample", ["GOOG"], val_start="2016-01-01", test_start="2017-01-01")
    with pytest.raises(ConfigError, match="split is empty"):
        dm.setup()


def test_a_walk_forward_fold_keeps_its_bounds():
    dm = MarketData("data/sample", ["SPX"], window=16, train_start="2003-01-01", val_start="2009-01-01",
                    test_start="2011-01-01", test_end="2012-01-01")
    dm.setup()
    f = dm.frame
    assert f.filter(pl.col("split") == "train")["date"].min() >= date(2003, 1, 1)
    test = f.filter(pl.col("split") == "test")["date"]
    assert test.min() >= date(2011, 1, 1) and test.max() < date(2012, 1, 1)
    fit = read_prices("data/sample", ["SPX"]).filter(pl.col("date") >= date(2003, 1, 1))
    assert dm.features.shape[0] == f.height and fit.height < f.height  # history before the fold is kept as context


def test_cross_sectional_labels_are_per_date_and_leave_features_and_reports_raw():
    raw, dm, z = (_dm("data/sample", label=how) for how in ("raw", "cs_demean", "cs_zscore"))
    assert all(torch.equal(raw.inputs[k], d.inputs[k]) for d in (dm, z) for k in raw.inputs)  # features untouched
    for split in ("train", "val"):
        rows = dm.anchors[split]
        f = dm.frame[rows.numpy()].select("date", dm=pl.Series(dm.targets[rows].numpy()),
                                         z=pl.Series(z.targets[rows].numpy()))
        per_date = f.group_by("date").agg(pl.col("dm").mean(), pl.col("z").mean(), pl.col("z").std(ddof=0).alias("sd"),
                                          n=pl.len())
        assert per_date["dm"].abs().max() < 1e-5 and per_date["z"].abs().max() < 1e-5
        several = per_date.filter(pl.col("n") > 1)
        assert several.height > 100 and (several["sd"] - 1).abs().max() < 1e-4
    # forecasts are reported in log-return units against the raw realised return
    assert dm.frame["target"].equals(raw.frame["target"])
    out = dm.predictions_frame("test", torch.ones(len(dm.anchors["test"])))
    assert out["realised"].equals(raw.frame[raw.anchors["test"].numpy()]["target"].rename("realised"))
    assert np.allclose(out["pred"].to_numpy(), dm.target_std) and dm.target_std == pytest.approx(z.target_std)


def test_cross_sectional_label_uses_only_same_date_labels_of_its_split():
    from forecast.data.market import cross_sectional_label

    df = pl.DataFrame(dict(date=[1, 1, 1, 2, 2, 3, 3], split=["train", "train", None, "train", "train", "val", "val"],
                           target=[1.0, 3.0, 50.0, 2.0, None, 4.0, 8.0]))
    assert cross_sectional_label(df, "cs_demean").tolist() == [-1.0, 1.0, 0.0, 0.0, 0.0, -2.0, 2.0]
    assert cross_sectional_label(df, "cs_zscore").tolist() == [-1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 1.0]
    later = df.with_columns(target=pl.when(pl.col("date") > 1).then(pl.col("target") * 7).otherwise(pl.col("target")))
    nonanchor = df.with_columns(target=pl.when(pl.col("split").is_null()).then(-1e6).otherwise(pl.col("target")))
    for how in ("cs_demean", "cs_zscore"):
        assert cross_sectional_label(later, how)[:3].tolist() == cross_sectional_label(df, how)[:3].tolist()
        assert cross_sectional_label(nonanchor, how).tolist() == cross_sectional_label(df, how).tolist()


@pytest.mark.parametrize("kw", [dict(tickers=["SPX"], label="cs_demean"), dict(tickers="GOOG", label="cs_zscore"),
                                dict(tickers=None, label="nope")])
def test_bad_labels_name_the_key(kw):
    with pytest.raises(ConfigError) as e:
        MarketData("data/sample", **kw)
    assert e.value.key == "label"


def test_a_one_ticker_store_rejects_a_cross_sectional_label(tmp_path):
    prices = read_prices("data/sample", ["SPX"]).drop("ticker")
    write_prices(tmp_path / "s", {"SPX": prices})
    with pytest.raises(ConfigError, match="one ticker") as e:
        MarketData(str(tmp_path / "s"), tickers=None, label="cs_demean").setup()
    assert e.value.key == "label"


def test_cli_names_data_label_in_one_line(tmp_path, capsys, monkeypatch):
    import sys

    from hydra.core.global_hydra import GlobalHydra

    from forecast.__main__ import main

    monkeypatch.setattr(sys, "argv", list(sys.argv))
    with pytest.raises(SystemExit) as exit_:
        main(["train", "data.label=cs_demean", f"hydra.run.dir={tmp_path}/out",
              f"logger.tracking_uri=sqlite:///{tmp_path}/m.db"])
    GlobalHydra.instance().clear()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("error: data.label: "), err
