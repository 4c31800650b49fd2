"""A compressed model where the project expects a model: an nn.Module that runs its ONNX graph in
onnxruntime, so `predict model=<compressed run>` (which loads the run's `model` artifact and runs it
through forecast.training.fit.forecast) forecasts with exactly the file a device gets.

On a device nothing of this is needed: the `.onnx` file alone runs in onnxruntime, with inputs named
as below and the data state in its metadata (`forecast.predict_state`):

    import json, onnxruntime as ort
    sess = ort.InferenceSession("model.onnx")
    state = json.loads(sess.get_modelmeta().custom_metadata_map["forecast.predict_state"])
    forecast, = sess.run(["forecast"], {"x": x, "ticker": ticker, ...})  # log-return units
"""
from __future__ import annotations

import torch
from torch import nn

from forecast.compress.export import session
from forecast.model.forecaster import NOT_INPUTS


class OnnxForecaster(nn.Module):
    """`forward(**batch)` -> (B,) scores in the model's scaled units, as a Forecaster gives them."""

    def __init__(self, graph: bytes, threads: int = 1):
        super().__init__()
        self.graph, self.threads = bytes(graph), int(threads)
        self._session = None

    @property
    def sess(self):
        if self._session is None:
            self._session = session(self.graph, self.threads)
        return self._session

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        feeds = {i.name: batch[i.name].cpu().numpy() for i in self.sess.get_inputs()}
        return torch.from_numpy(self.sess.run(["score"], feeds)[0])  # (B,)

    def predict_step(self, batch: dict, batch_idx: int = 0) -> torch.Tensor:
        return self(**{k: v for k, v in batch.items() if k not in NOT_INPUTS})

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_session"] = None  # a session is rebuilt from the bytes where the model is loaded
        return state
