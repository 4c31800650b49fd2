"""Market data: the Parquet store -> causal per-ticker features -> sliding windows split by date.

A sample is anchored at the close of session t: its input window holds the features of sessions
t-L+1..t (each computed from data up to that session only) and its target is the forward log return
log(close[t+h] / close[t]). Splits are by date: a train anchor's purge horizon ends before
`val_start`, a validation anchor's before `test_start`, so no label of one split overlaps the next.
Normalisation statistics are fitted on train-period rows only. `label` picks what the loss sees: the
target itself, or the target transformed per date across tickers (cross_sectional_label); forecasts
are always reported in log-return units beside the raw target.
"""
from __future__ import annotations

from datetime import date
from pathlib import Path

import lightning as L
import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader

from data_pipelines.store import read_prices, snapshot
from forecast.data import shards
from forecast.data.windows import EpochBatchSampler, WindowDataset
from forecast.errors import ConfigError, UserError

FEATURES = ["ret", "gap", "intraday", "range", "dvol"]
CHUNK = 1 << 20  # rows normalised at a time: float64 temporaries of (CHUNK, F), not (N, F)
SPLITS = ("train", "val", "test")
LABELS = ("raw", "cs_demean", "cs_zscore")


def price_features(prices: pl.DataFrame) -> pl.DataFrame:
    """Scale-free price/volume features; the value at session t uses sessions <= t only."""
    prev_close = pl.col("close").shift(1).over("ticker")
    prev_volume = pl.col("volume").shift(1).over("ticker")
    return sorted_by_ticker_and_date(prices).with_columns(
        ret=(pl.col("close") / prev_close).log(),
        gap=(pl.col("open") / prev_close).log(),
        intraday=(pl.col("close") / pl.col("open")).log(),
        range=(pl.col("high") / pl.col("low")).log(),
        dvol=(pl.col("volume") + 1).log() - (prev_volume + 1).log(),
    )


def sorted_by_ticker_and_date(df: pl.DataFrame) -> pl.DataFrame:
    """`df` sorted by ticker, then date; not copied when it is already (a store read in ticker order)."""
    same = pl.col("ticker") == pl.col("ticker").shift(1)
    ok = df.select(pl.col("ticker").is_sorted().alias("a"),
                   (same.not_() | (pl.col("date") > pl.col("date").shift(1))).all().alias("b"))
    return df if all(ok.row(0)) else df.sort("ticker", "date")


def add_target(df: pl.DataFrame, horizon: int) -> pl.DataFrame:
    """target = log(close[t+h] / close[t]); null where t+h is past the ticker's last session."""
    future = pl.col("close").shift(-horizon).over("ticker")
    return df.with_columns(target=(future / pl.col("close")).log())


def cross_sectional_label(df: pl.DataFrame, how: str) -> np.ndarray:
    """The label each anchor is trained and validated on, (N,) (null target -> 0): the raw forward
    return, or per date across the anchors of that date and split (`cs_demean`: minus their mean;
    `cs_zscore`: also divided by their std, 0 where that is 0). Only same-date labels of the same split
    enter, as in Qlib's CSZScoreNorm label processor; features are never touched."""
    y = pl.col("target")
    if how == "raw":
        return df.select(y.fill_null(0.0))["target"].to_numpy()
    anchor = pl.col("split").is_not_null() & y.is_not_null()
    by = ("date", "split")
    out = y - y.filter(anchor).mean().over(*by)
    if how == "cs_zscore":
        sd = y.filter(anchor).std(ddof=0).over(*by)
        out = pl.when(sd > 0).then(out / sd).otherwise(0.0)
    return df.select(pl.when(anchor).then(out).otherwise(0.0).fill_null(0.0).alias("label"))["label"].to_numpy()


def split_dates(dates: pl.Series, val_start, test_start, val_frac: float, test_frac: float) -> tuple[date, date]:
    """Explicit boundaries, or the quantiles of the distinct dates when they are None."""
    uniq = dates.unique().sort()
    n = uniq.len()
    if val_start is None:
        val_start = uniq[int(n * (1 - val_frac - test_frac))]
    if test_start is None:
        test_start = uniq[int(n * (1 - test_frac))]
    return date.fromisoformat(str(val_start)), date.fromisoformat(str(test_start))


def assign_split(df: pl.DataFrame, window: int, purge: int, val_start: date, test_start: date,
                 train_start: date | None = None, test_end: date | None = None) -> pl.DataFrame:
    """Label each row train/val/test/None as an anchor; needs `window` valid feature rows behind it.
    Optional `train_start` (first train anchor) and `test_end` (exclusive) cut one walk-forward fold."""
    pos = pl.int_range(pl.len()).over("ticker")
    purge_end = pl.col("date").shift(-purge).over("ticker")  # session at t + purge (null past the end)
    usable = (pos >= window) & pl.col("target").is_not_null()  # row 0 has no previous close
    after_start = pl.lit(True) if train_start is None else pl.col("date") >= train_start
    before_end = pl.lit(True) if test_end is None else pl.col("date") < test_end
    split = (
        pl.when(usable & after_start & (purge_end < val_start)).then(pl.lit("train"))
        .when(usable & (pl.col("date") >= val_start) & (purge_end < test_start)).then(pl.lit("val"))
        .when(usable & (pl.col("date") >= test_start) & before_end).then(pl.lit("test"))
    )
    return df.with_columns(split=split)


class MarketData(L.LightningDataModule):
    def __init__(self, store: str, tickers: list[str] | None = None, window: int = 64, horizon: int = 1,
                 purge: int | None = None, val_start: str | None = None, test_start: str | None = None,
                 val_frac: float = 0.15, test_frac: float = 0.15, batch_size: int = 128, num_workers: int = 0,
                 modalities: list[str] = ("price",), train_start: str | None = None, test_end: str | None = None,
                 seed: int = 0, label: str = "raw", exog_level_window: int | None = None,
                 shard_tickers: bool = False):
        super().__init__()
        from forecast.config import validate
        from forecast.config.parts import MarketData as Schema

        validate(Schema, {k: v for k, v in locals().items() if k in Schema.model_fields}, "")  # the one set of rules
        purge = horizon if purge is None else purge
        tickers = [tickers] if isinstance(tickers, (str, int)) else tickers  # data.tickers=SPX is one ticker
        self.store, self.tickers = store, None if tickers is None else [str(t) for t in tickers]
        self.window, self.horizon, self.purge, self.batch_size = window, horizon, purge, batch_size
        self.bounds = (val_start, test_start, val_frac, test_frac)
        self.num_workers, self.seed = num_workers, seed
        self.modalities = [str(m) for m in modalities]
        self.label, self.exog_level_window = label, exog_level_window
        self._check_label(self.tickers)
        self.fold = tuple(None if d is None else date.fromisoformat(str(d)) for d in (train_start, test_end))
        self.frame: pl.DataFrame | None = None
        self.shard_tickers, self.survey, self.pad, self.inputs = bool(shard_tickers), None, {}, {}
        extra = sorted(set(self.modalities) - {"price", "ticker"})
        if self.shard_tickers and extra:
            raise ConfigError("shard_tickers", f"ticker shards fit the price and ticker inputs only; the modalities "
                                               f"{extra} are fitted on the whole store: set it to false")

    def setup(self, stage: str | None = None) -> None:
        """Read the store, split, fit the training statistics and tensorise. With `shard_tickers`, the
        survey first (forecast/data/shards.py); `stage="plan"` (train, before DDP starts) stops there,
        any other stage (Lightning's "fit" on each rank) reads this rank's shard of tickers."""
        if self.frame is not None:
            return
        if not (Path(self.store) / "manifest.parquet").exists():
            raise UserError(f"data.store: no store at {self.store}; stores found: {find_stores() or 'none'} "
                            "(build one with `python -m forecast ingest path=<files> store=<dir>`)")
        if self.shard_tickers:
            self._survey()
            if stage != "plan":
                rank, world = shards.rank_and_world()
                self._read_shard(shards.plan(self.survey.manifest, world)[rank], rank)
            return
        df = self._features(read_prices(self.store, self.tickers))
        self.val_start, self.test_start = split_dates(df["date"], *self.bounds)
        self._check_label(df["ticker"].unique().to_list())
        self.frame = assign_split(df, self.window, self.purge, self.val_start, self.test_start, *self.fold)
        self._check_splits({s: int((self.frame["split"] == s).sum()) for s in SPLITS},
                           df["date"].min(), df["date"].max())
        self._fit_and_tensorise()

    def _features(self, prices: pl.DataFrame) -> pl.DataFrame:
        # open/high/low/volume are not kept: the features and the target are made of them
        df = add_target(price_features(prices), self.horizon).drop("open", "high", "low", "volume")
        return df.rechunk() if df.n_chunks() > 1 else df  # the statistics sum chunk by chunk: one chunk

    def _check_splits(self, counts: dict[str, int], first, last) -> None:
        _check(self.val_start < self.test_start, "val_start",
               f"must be before test_start, got {self.val_start} >= {self.test_start}")
        for s, n in counts.items():
            _check(n > 0, f"{'val' if s == 'train' else s}_start",
                   f"the {s} split is empty (dates {first}..{last}, "
                   f"val_start={self.val_start}, test_start={self.test_start}, window={self.window})")

    def _survey(self) -> None:
        """Split dates, anchor counts and vocabulary from the (ticker, date) columns alone, alike on every rank."""
        if self.survey is not None:
            return
        def assign(part, val_start, test_start):  # noqa: E306 (the target's nulls, from the dates alone)
            part = part.with_columns(target=pl.col("date").shift(-self.horizon).over("ticker"))
            return assign_split(part, self.window, self.purge, val_start, test_start, *self.fold)

        with snapshot(self.store) as snap:
            self.survey = shards.survey(snap, self.tickers, self.bounds, assign)
        sv = self.survey
        self.val_start, self.test_start, self.vocab = sv.val_start, sv.test_start, sv.vocab
        self._check_label(sv.manifest["ticker"].to_list())
        days = sv.dates.astype("datetime64[D]")
        self._check_splits(sv.counts, days[0] if len(days) else None, days[-1] if len(days) else None)

    def _read(self, tickers: list[str]) -> pl.DataFrame:
        """The features of `tickers`, split by the survey's dates; the store must hold what it surveyed."""
        with snapshot(self.store) as snap:
            now = snap.manifest.filter(pl.col("ticker").is_in(tickers)).select(self.survey.manifest.columns)
            if not now.sort("ticker").equals(self.survey.manifest.filter(pl.col("ticker").is_in(tickers))):
                raise UserError(f"data.store: {self.store} changed after the ticker shards were planned "
                                "(an ingest wrote it); run again")
            df = self._features(snap.read_prices(tickers))
        return assign_split(df, self.window, self.purge, self.val_start, self.test_start, *self.fold)

    def _read_shard(self, tickers: list[str], rank: int) -> None:
        """This rank's tickers; statistics reduced over all ranks; equal batch counts on every rank."""
        self.frame = self._read(tickers)
        self._fit_and_tensorise(reduced=True)
        self.pad = {s: shards.all_max(len(self.anchors[s])) for s in ("train", "val")}
        empty = [s for s in ("train", "val") if len(self.anchors[s]) == 0]
        if shards.all_max(len(empty)):  # every rank raises, so none waits on the others
            raise ConfigError("shard_tickers", f"a rank's shard has no {'/'.join(empty) or 'train/val'} "
                                               f"anchors (rank {rank}: {len(tickers)} tickers); use fewer devices")

    def read_all(self) -> None:
        """After sharded DDP training, on rank 0 (which tests alone): every ticker, normalised with the
        statistics the ranks fitted together (nothing refitted). A no-op when this rank holds them all."""
        if not self.shard_tickers or self.frame["ticker"].n_unique() == self.survey.manifest.height:
            return
        self.frame = None  # the shard's arrays go before the whole store comes in
        self.inputs = {}
        self.frame = self._read(self.survey.manifest["ticker"].to_list())
        self._tensorise(cross_sectional_label(self.frame, self.label))
        self.pad = {}

    def _fit_and_tensorise(self, reduced: bool = False) -> None:
        """Normalisation and target scale from train-period rows only (over every rank's shard when
        `reduced`); then one tensor per column."""
        df = self.frame
        fit_rows = (df["date"] < self.val_start) & (df["date"] >= (self.fold[0] or date.min))
        is_train = (df["split"] == "train").fill_null(False)
        if reduced:
            mean, std = shards.mean_std(df, FEATURES, fit_rows)
            label = shards.cross_sectional_label(df, self.label, self.survey.dates)
            demeaned = label if self.label != "cs_zscore" else shards.cross_sectional_label(
                df, "cs_demean", self.survey.dates)
            self.target_mean = float(shards.mean_std(df, ["target"], is_train)[0][0])
            self.target_std = float(shards.mean_std(pl.DataFrame(dict(d=demeaned)), ["d"], is_train)[1][0])
        else:
            mean = df.select(*[pl.col(c).filter(fit_rows).drop_nans().mean().alias(c) for c in FEATURES]).row(0)
            std = df.select(*[pl.col(c).filter(fit_rows).drop_nans().std().alias(c) for c in FEATURES]).row(0)
            self.target_mean = float(df["target"].filter(is_train).mean())
            label = cross_sectional_label(df, self.label)  # (N,) what the loss sees, before scaling
            demeaned = label if self.label != "cs_zscore" else cross_sectional_label(df, "cs_demean")
            self.target_std = float(np.std(demeaned[is_train.to_numpy()], ddof=1))  # forecasts x this: log returns
            self.vocab = sorted(df["ticker"].filter(is_train).unique().to_list())
        self.feature_mean = np.array(mean, dtype=np.float64)
        self.feature_std = np.array([s if s and s > 0 else 1.0 for s in std], dtype=np.float64)
        self.inputs = {}
        self._tensorise(label)
        self.inputs.update(self._modality_inputs(fit_rows.to_numpy()))

    def _tensorise(self, label: np.ndarray) -> None:
        """The per-row tensors, with the fitted statistics and vocabulary; `label` (N,) before scaling."""
        df = self.frame
        self.inputs["x"] = torch.from_numpy(self._normalised(df))  # (N, F)
        ids = {t: i + 1 for i, t in enumerate(self.vocab)}  # 0: a ticker unseen in training
        ticker_ids = df.select(pl.col("ticker").replace_strict(ids, default=0, return_dtype=pl.Int64))
        self.ticker_ids = torch.tensor(ticker_ids.to_series().to_numpy())  # (N,)
        scale = 1.0 if self.label == "cs_zscore" else self.target_std
        self.targets = torch.tensor(label / scale, dtype=torch.float32)  # (N,) in train-std units
        days = df["date"].cast(pl.Int32).to_numpy()  # days since 1970: the cross-section of a sample
        self.date_ids = torch.tensor(days, dtype=torch.long)
        self.anchors = {s: torch.tensor(np.flatnonzero((df["split"] == s).to_numpy()), dtype=torch.long)
                        for s in SPLITS}

    def _normalised(self, df: pl.DataFrame) -> np.ndarray:
        """(N, F) float32 price features, z-scored with the training statistics, non-finite -> 0;
        computed CHUNK rows at a time (the same values as all at once)."""
        x = np.empty((df.height, len(FEATURES)), dtype=np.float32)
        for lo in range(0, df.height, CHUNK):
            part = df.slice(lo, CHUNK).select(FEATURES).to_numpy()  # (<=CHUNK, F) float64
            x[lo:lo + len(part)] = np.nan_to_num((part - self.feature_mean) / self.feature_std,
                                                 nan=0.0, posinf=0.0, neginf=0.0)
        return x

    def _modality_inputs(self, fit_rows: np.ndarray) -> dict[str, torch.Tensor]:
        """Per-row inputs of the modalities beyond price and ticker (see forecast/modalities.py)."""
        extra = [m for m in self.modalities if m not in ("price", "ticker")]
        if not extra:
            return {}
        from forecast.data.modalities import row_inputs

        return row_inputs(extra, self.frame, self.store, fit_rows,
                          {"exogenous": {"level_window": self.exog_level_window}})

    @property
    def features(self) -> torch.Tensor:
        return self.inputs["x"]  # (N, F) normalised price features

    @property
    def dims(self) -> dict[str, int]:
        dims = dict(n_features=len(FEATURES), n_tickers=len(self.vocab) + 1, window=self.window)
        dims.update({f"n_{k}": v.shape[-1] for k, v in self.inputs.items() if k != "x" and v.dim() == 2})
        return dims

    def dataset(self, split: str) -> WindowDataset:
        return WindowDataset(self.inputs, self.ticker_ids, self.targets, self.anchors[split], self.window,
                             self.date_ids)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        """Train and val batches are sharded across DDP ranks, by sample or (`shard_tickers`) by the
        ticker shard each rank read; test batches never (rank 0 tests alone)."""
        ds = self.dataset(split)
        sampler = EpochBatchSampler(len(ds), self.batch_size, shuffle=shuffle, seed=self.seed,
                                    shard=split != "test" and not self.pad, pad=self.pad.get(split))
        if self.trainer is not None:  # Lightning iterates a resumed epoch before it calls set_epoch
            sampler.set_epoch(self.trainer.current_epoch)
        return DataLoader(ds, batch_size=None, sampler=sampler, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predictions_frame(self, split: str, pred: torch.Tensor) -> pl.DataFrame:
        """(ticker, date, pred, realised) in log-return units for the anchors of `split`."""
        rows = self.anchors[split].numpy()
        out = self.frame[rows].select("ticker", "date", realised=pl.col("target"))
        return out.with_columns(pred=pl.Series(pred.double().numpy() * self.target_std))

    def predict_state(self) -> dict:
        """Everything `predict` needs to rebuild this data's inputs for a later session without refitting
        anything (JSON-ready, floats exact): the window and split settings, the training-period
        normalisation and target scale, the ticker vocabulary, each ticker's exchange, and the
        exogenous statistics (forecast/inference/features.py applies them)."""
        from data_pipelines.store import read_manifest

        tickers = self.frame["ticker"].unique().sort().to_list()
        exchange = dict(read_manifest(self.store).select("ticker", "exchange").iter_rows())
        return dict(format=1, store=str(self.store), window=self.window, horizon=self.horizon, label=self.label,
                    modalities=self.modalities, exog_level_window=self.exog_level_window,
                    val_start=str(self.val_start), test_start=str(self.test_start), features=FEATURES,
                    feature_mean=self.feature_mean.tolist(), feature_std=self.feature_std.tolist(),
                    target_mean=self.target_mean, target_std=self.target_std, vocab=self.vocab, tickers=tickers,
                    exchanges={t: exchange.get(t, "XNYS") for t in tickers},
                    exogenous=self._exogenous_state() if "exogenous" in self.modalities else None)

    def _exogenous_state(self) -> dict:
        from forecast.data.modalities import exogenous_state

        df = self.frame
        fit_rows = ((df["date"] < self.val_start) & (df["date"] >= (self.fold[0] or date.min))).to_numpy()
        return exogenous_state(df, self.store, fit_rows, self.exog_level_window)


    def _check_label(self, tickers: list[str] | None) -> None:
        """A cross-sectional label needs a cross-section: more than one ticker."""
        if self.label != "raw" and tickers is not None and len(set(tickers)) < 2:
            raise ConfigError("label", f"{self.label} transforms the label per date across tickers, but the run "
                                       f"has one ticker {sorted(set(tickers))}; set it to raw")


def known_modalities() -> list[str]:
    """price and ticker, plus the per-row modalities of forecast/data/modalities.py."""
    from forecast.data.modalities import MODALITIES

    return ["price", "ticker", *MODALITIES]


def find_stores(roots=("data", ".")) -> list[str]:
    """Directories holding a store manifest, one level below each root."""
    found = {str(p.parent) for r in roots if Path(r).is_dir() for p in Path(r).glob("*/manifest.parquet")}
    return sorted(found)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)
