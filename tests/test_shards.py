"""Ticker shards (forecast/data/shards.py): one process on the whole store equals the unsharded read;
two gloo ranks each read only their tickers and reduce to the whole store's statistics."""
import json
import os
import socket

import numpy as np
import polars as pl
import pytest
import torch

from data_pipelines.store import write_prices
from forecast.data import shards
from forecast.data.bench_wide import make_store
from forecast.data.market import MarketData
from forecast.errors import ConfigError, UserError

SPLIT = dict(val_start="2023-06-01", test_start="2024-01-02")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """7 tickers over 700 sessions, plus one that starts in the validation period (no train anchor,
    so not in the vocabulary) and one with half the history."""
    path = tmp_path_factory.mktemp("shards") / "store"
    make_store(path, tickers=7, sessions=700, seed=5)
    rows = pl.read_parquet(path / "manifest.parquet")
    assert rows.height == 7
    whole = MarketData(str(path), tickers=["W00000"], window=16, **SPLIT)
    whole.setup()
    late = whole.frame.filter(pl.col("date") >= pl.date(2023, 7, 1))
    from data_pipelines.store import read_prices

    prices = read_prices(path, ["W00000", "W00001"])
    write_prices(path, {"LATE": prices.filter(pl.col("ticker") == "W00000", pl.col("date") >= late["date"].min())
                        .drop("ticker"),
                        "HALF": prices.filter(pl.col("ticker") == "W00001").tail(500).drop("ticker")})
    return str(path)


def _data(store, **kw):
    return MarketData(store, tickers=None, window=16, batch_size=64, **{**SPLIT, **kw})


@pytest.mark.parametrize("label", ["raw", "cs_zscore"])
def test_one_process_on_ticker_shards_equals_the_unsharded_read(store, label):
    full, sharded = _data(store, label=label), _data(store, label=label, shard_tickers=True)
    full.setup()
    sharded.setup("plan")
    assert sharded.frame is None  # surveyed, nothing read
    assert sharded.vocab == full.vocab and "LATE" not in full.vocab and "HALF" in full.vocab
    assert sharded.survey.counts == {s: len(a) for s, a in full.anchors.items()}
    assert sharded.dims == full.dims
    sharded.setup("fit")
    assert sharded.frame.equals(full.frame)
    np.testing.assert_allclose(sharded.feature_mean, full.feature_mean, rtol=1e-12)
    np.testing.assert_allclose(sharded.feature_std, full.feature_std, rtol=1e-12)
    assert sharded.target_mean == pytest.approx(full.target_mean, rel=1e-12)
    assert sharded.target_std == pytest.approx(full.target_std, rel=1e-12)
    torch.testing.assert_close(sharded.targets, full.targets, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sharded.features, full.features)
    assert torch.equal(sharded.ticker_ids, full.ticker_ids)
    assert all(torch.equal(sharded.anchors[s], full.anchors[s]) for s in full.anchors)
    assert [b["row"].tolist() for b in sharded.val_dataloader()] == [b["row"].tolist() for b in full.val_dataloader()]


def test_fraction_split_dates_are_surveyed_as_the_full_read_resolves_them(store):
    full = MarketData(store, window=16)
    full.setup()
    sharded = MarketData(store, window=16, shard_tickers=True)
    sharded.setup("plan")
    assert (sharded.val_start, sharded.test_start) == (full.val_start, full.test_start)


def test_the_plan_covers_every_ticker_once_balanced_on_rows():
    manifest = pl.DataFrame(dict(ticker=[f"T{i}" for i in range(11)], rows=[900, 100, 500, 500, 300, 300, 250,
                                                                             120, 80, 40, 10]))
    for world in (1, 2, 3, 4):
        plan = shards.plan(manifest, world)
        assert plan == shards.plan(manifest.reverse(), world)  # a function of the tickers, not their order
        assert sorted(t for s in plan for t in s) == sorted(manifest["ticker"])
        loads = [manifest.filter(pl.col("ticker").is_in(s))["rows"].sum() for s in plan]
        assert max(loads) - min(loads) <= manifest["rows"].max()


def _rank(rank: int, world: int, port: int, store: str, label: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world)
    dm = _data(store, label=label, shard_tickers=True)
    dm.setup("plan")
    dm.setup("fit")
    ids = dm.targets.numpy()
    result = dict(tickers=sorted(dm.frame["ticker"].unique().to_list()), mean=dm.feature_mean.tolist(),
                  std=dm.feature_std.tolist(), target_mean=dm.target_mean, target_std=dm.target_std,
                  train_batches=len(dm.train_dataloader()), val_batches=len(dm.val_dataloader()),
                  train_rows=sorted({r for b in dm.train_dataloader() for r in b["row"].tolist()}),
                  labels=dm.frame.select("ticker", "date").with_columns(label=pl.Series(ids))
                  .filter(pl.Series((dm.frame["split"] == "train").fill_null(False))).rows())
    with open(f"{out}/{rank}.json", "w") as f:
        json.dump(result, f, default=str)
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("label", ["cs_zscore"])
def test_two_gloo_ranks_read_disjoint_shards_and_reduce_to_the_whole_stores_statistics(store, label, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.multiprocessing.spawn(_rank, args=(2, port, store, label, str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    full = _data(store, label=label)
    full.setup()
    assert not set(ranks[0]["tickers"]) & set(ranks[1]["tickers"])  # each read only its own shard
    assert sorted(ranks[0]["tickers"] + ranks[1]["tickers"]) == sorted(full.frame["ticker"].unique())
    for r in ranks:
        np.testing.assert_allclose(r["mean"], full.feature_mean, rtol=1e-12)
        np.testing.assert_allclose(r["std"], full.feature_std, rtol=1e-12)
        assert r["target_mean"] == pytest.approx(full.target_mean, rel=1e-12)
        assert r["target_std"] == pytest.approx(full.target_std, rel=1e-12)
    assert ranks[0]["train_batches"] == ranks[1]["train_batches"]  # equal steps, or DDP waits forever
    assert ranks[0]["val_batches"] == ranks[1]["val_batches"]
    # the cross-sectional labels of each shard are those of the whole store: per-date sums reduced
    want = {(t, d): y for t, d, y in full.frame.select("ticker", "date").with_columns(
        label=pl.Series(full.targets.numpy())).rows()}
    got = [(t, d, y) for r in ranks for t, d, y in r["labels"]]
    assert len(got) == len(full.anchors["train"])
    np.testing.assert_allclose([y for _, _, y in got], [want[(t, __import__("datetime").date.fromisoformat(d))]
                                                       for t, d, _ in got], rtol=1e-5, atol=1e-6)


def test_a_store_written_between_the_plan_and_the_read_is_refused(store, tmp_path):
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    dm = _data(str(copy), shard_tickers=True)
    dm.setup("plan")
    from data_pipelines.store import read_prices

    write_prices(copy, {"HALF": read_prices(copy, ["HALF"]).drop("ticker").head(200)})
    with pytest.raises(UserError, match="changed after the ticker shards were planned"):
        dm.setup("fit")


def test_ticker_shards_refuse_modalities_fitted_on_the_whole_store(store):
    with pytest.raises(ConfigError, match="shard_tickers"):
        _data(store, shard_tickers=True, modalities=["price", "exogenous"])
