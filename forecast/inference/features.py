"""A model's inputs for as-of sessions, rebuilt from its stored state with nothing refitted.

Training (forecast/data/market.py) fits the feature normalisation, the target scale and the exogenous
statistics on the training period; `MarketData.predict_state` logs them with the model, and here they
are only applied. The windows are cut exactly as in training (`WindowDataset`, `pos >= window` rows of
history behind the anchor), so the forecast for an anchor inside the test split equals the one train
logged (tests/test_predict.py).

Causality: prices are cut at the close of the last as-of session before any feature is computed, and
each feature of session t uses data up to its close only (price_features, the modalities), so the
inputs of as-of t do not change when later bars arrive.
"""
from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import polars as pl
import torch

from data_pipelines.store import read_prices
from forecast.data.market import price_features
from forecast.data.windows import WindowDataset
from forecast.errors import UserError


def check_store(store: str, state: dict) -> None:
    """Raise a one-line UserError when the store lacks a modality (or exogenous series) the model needs."""
    from forecast.data.modalities import exogenous_table, news_table

    modalities = state["modalities"]
    if "exogenous" in modalities:
        missing = sorted(set(state["exogenous"]["series"]) - set(exogenous_table(store)["series"].unique()))
        if missing:
            raise UserError(f"data.store: {Path(store) / 'exogenous.parquet'} lacks the exogenous series "
                            f"{missing} the model was trained on")
    if "news" in modalities or "news_minilm" in modalities:
        news_table(store)


def read_frame(store: str, state: dict, tickers: list[str], first: dt.date, last: dt.date) -> pl.DataFrame:
    """Price features of `tickers` from bars up to the close of `last`, cut to the rows that the windows
    of as-of sessions `first`..`last` need. `pos` is each row's index in its ticker's whole history
    (row 0 has no previous close, so an anchor needs pos >= window, as in training)."""
    prices = read_prices(store, tickers).filter(pl.col("date") <= last)
    df = price_features(prices).with_columns(pos=pl.int_range(pl.len()).over("ticker"),
                                             before=(pl.col("date") < first).sum().over("ticker"))
    # exogenous levels against their trailing level_window dates and changes need history behind the window
    margin = state["window"] + (state["exog_level_window"] or 0) + 2
    if df.height == 0:  # no bar up to `last`: every ticker is stale
        return df.drop("before")
    start = pl.max_horizontal(pl.col("before").cast(pl.Int64) - margin, 0)  # signed: a young ticker has < margin
    return df.filter(pl.col("pos") >= start).drop("before")


def inputs(frame: pl.DataFrame, state: dict, store: str) -> dict[str, torch.Tensor]:
    """Per-row model inputs (N, ...) of `frame`, normalised with the stored training statistics."""
    x = frame.select(state["features"]).to_numpy()  # (N, F)
    x = (x - np.array(state["feature_mean"])) / np.array(state["feature_std"])
    out = {"x": torch.tensor(np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), dtype=torch.float32)}
    ids = {t: i + 1 for i, t in enumerate(state["vocab"])}  # 0: a ticker unseen in training
    out["ticker"] = torch.tensor([ids.get(t, 0) for t in frame["ticker"].to_list()], dtype=torch.long)  # (N,)
    for name in state["modalities"]:
        if name == "exogenous":
            out.update(exogenous(frame, store, state["exogenous"], state["exog_level_window"]))
        elif name not in ("price", "ticker"):
            from forecast.data.modalities import row_inputs

            out.update(row_inputs([name], frame, store, np.zeros(frame.height, dtype=bool)))  # nothing fitted
    return out


def exogenous(frame: pl.DataFrame, store: str, stats: dict, level_window: int | None) -> dict[str, torch.Tensor]:
    """`exog` (N, 2S) and `exog_mask` (N, 2S) as `modalities.exogenous_inputs` makes them, with the
    stored training-period mean and std of each column instead of ones fitted here."""
    from forecast.data.modalities import exogenous_table, exogenous_wide

    _, wide = exogenous_wide(exogenous_table(store), frame["date"], level_window)
    values = frame.select("date").join(wide, on="date", how="left").select(stats["columns"]).to_numpy()
    values = values.astype(np.float64)  # (N, 2S)
    known = np.isfinite(values) & np.array(stats["fitted"])[None, :]
    z = np.clip(np.where(known, (values - np.array(stats["mean"])) / np.array(stats["std"]), 0.0), -5, 5)
    return {"exog": torch.tensor(z, dtype=torch.float32), "exog_mask": torch.from_numpy(known)}


def dataset(inputs: dict[str, torch.Tensor], frame: pl.DataFrame, rows: np.ndarray, window: int) -> WindowDataset:
    """The windows ending at `rows` of `frame` (their anchors), as training cuts them."""
    per_row = {k: v for k, v in inputs.items() if k != "ticker"}
    days = torch.tensor(frame["date"].cast(pl.Int32).to_numpy(), dtype=torch.long)
    return WindowDataset(per_row, inputs["ticker"], torch.zeros(frame.height), torch.tensor(rows, dtype=torch.long),
                         window, days)


def input_hashes(batch: dict[str, torch.Tensor], names: list[str]) -> list[str]:
    """One digest per sample of everything the model sees for it; padding (trailing all-zero columns,
    e.g. of news token ids, whose width depends on the other rows read) is left out, the shape is not."""
    out = []
    for i in range(len(batch["ticker"])):
        h = hashlib.blake2b(digest_size=16)
        for name in names:
            v = batch[name][i].numpy()  # (L, ...) or ()
            if v.ndim == 2:
                nonzero = np.flatnonzero(v.any(axis=0))
                v = v[:, : (nonzero[-1] + 1 if len(nonzero) else 0)]
            h.update(f"{name}:{v.dtype}:{v.shape};".encode())
            h.update(np.ascontiguousarray(v).tobytes())
        out.append(h.hexdigest())
    return out
