"""A Forecaster -> one self-contained ONNX file (`torch.onnx.export`, dynamo), checked in onnxruntime.

The graph's inputs are the model's batch keys, named as the data module makes them (x, ticker,
calendar, exog, exog_mask, news_tokens, news_weights, ...); its outputs are `score` (B,) in the
model's scaled units (what `predict` multiplies by the target scale) and `forecast` (B,) in log-return
units. The batch axis is always free, and so is the news n-gram axis. The time axis is free only when
the backbone declares `EXPORTABLE = "dynamic"` (established by tests/test_compress_export.py): a
chunked or looped scan (Mamba, Mamba-2, chunked linear attention) specialises the time length it was
traced with, so those export with the model's window fixed, which is all a daily forecast needs.

The file carries everything a device needs besides onnxruntime: the weights (no external data), and
in its metadata the data state `predict` uses (`forecast.predict_state`: window, features and their
training-period normalisation, the ticker vocabulary, the target scale). Node stack traces that the
exporter records are dropped: they are most of the file for a small model.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

TOLERANCE = 1e-4  # max |onnx - torch| of the fp32 graph, in units of the target's std (tested)
FREE_WIDTH = ("news_tokens", "news_weights")  # the last axis: the most n-grams of a session in a batch


class Graph(nn.Module):
    """Positional inputs in `names` order -> (score, forecast): what the ONNX graph computes."""

    def __init__(self, model: nn.Module, names: list[str], scale: float):
        super().__init__()
        self.model, self.names, self.scale = model, list(names), float(scale)

    def forward(self, *inputs: torch.Tensor):
        score = self.model(**dict(zip(self.names, inputs)))  # (B,)
        return score, score * self.scale


def exportable(model: nn.Module) -> str | None:
    """The backbone's declared capability: "dynamic", "fixed" or None (not exportable)."""
    return getattr(type(model.backbone), "EXPORTABLE", None)


def dynamic_shapes(example: dict[str, torch.Tensor], free_time: bool) -> dict:
    batch, time = torch.export.Dim("batch", min=1), torch.export.Dim("time", min=2)
    width = torch.export.Dim("ngrams", min=1)
    shapes = []
    for name, v in example.items():
        axes = {0: batch}
        if free_time and v.dim() >= 3:
            axes[1] = time
        if name in FREE_WIDTH:
            axes[v.dim() - 1] = width
        shapes.append(axes)
    return {"inputs": tuple(shapes)}


def export(model: nn.Module, example: dict[str, torch.Tensor], path: Path, state: dict) -> Path:
    """Write `model` (eval mode, CPU) as a single ONNX file at `path`; returns the path."""
    import onnx

    kind = exportable(model)
    if kind is None:
        raise ValueError(f"{type(model.backbone).__name__} does not declare EXPORTABLE: no ONNX export")
    example = {k: v[:2] if k not in FREE_WIDTH else _widen(v[:2]) for k, v in example.items()}
    graph = Graph(model.cpu().eval(), list(example), state["target_std"]).eval()
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(graph, tuple(example.values()), dynamo=True, verbose=False,
                                    input_names=list(example), output_names=["score", "forecast"],
                                    dynamic_shapes=dynamic_shapes(example, kind == "dynamic"))
    proto = program.model_proto
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del proto.graph.value_info[:]  # shapes the exporter recorded disagree with onnx's own inference
    entry = proto.metadata_props.add()
    entry.key, entry.value = "forecast.predict_state", json.dumps(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return path


def _widen(v: torch.Tensor) -> torch.Tensor:
    """An n-gram axis of at least 2 (torch.export specialises axes of size 1)."""
    return v if v.shape[-1] >= 2 else torch.cat([v, torch.zeros_like(v)], dim=-1)


@contextlib.contextmanager
def _quiet():
    """The exporter prints its progress and warns about absent torchvision ops: not the user's concern."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def session(path: Path | bytes, threads: int = 1):
    """An onnxruntime session with `threads` intra-op threads whose workers do not spin after a run
    (spinning threads steal the cores of whatever runs next, torch or another session)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    source = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run(sess, batch: dict[str, torch.Tensor]) -> np.ndarray:
    """`score` (B,) of one batch; only the inputs the graph declares are fed."""
    names = [i.name for i in sess.get_inputs()]
    return sess.run(["score"], {n: batch[n].numpy() for n in names})[0]


def parity(model: nn.Module, path: Path, batches: list[dict[str, torch.Tensor]]) -> float:
    """Max |onnxruntime - torch| of the score over `batches`."""
    sess, worst = session(path), 0.0
    model.eval()
    with torch.no_grad():
        for batch in batches:
            ref = model(**batch).numpy()  # (B,)
            worst = max(worst, float(np.abs(run(sess, batch) - ref).max()))
    return worst
