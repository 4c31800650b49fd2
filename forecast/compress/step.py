"""The step function as ONNX: one new bar and the backbone's state in, the forecast and the new state
out, so an edge device updates its forecast one session at a time instead of re-reading a window.

A Forecaster steps because its encoders and fusion act on each position alone and its heads read the
last position (tests/test_compress_step.py checks that stepping a window equals the full forward).
The backbone must declare `CAN_STEP` and have a state of fixed shape: LSTM (h, c), linear attention
(the running sums), Mamba and Mamba-2 (the conv buffer and the SSM state). The Transformer's state
is its KV cache, which grows by one position a step: it is not exported as a step (`steppable`).

Inputs: the model's batch keys for one bar (`x` (B, 1, F), `ticker` (B,), `calendar` (B, 1, 30), ...)
then `state_0`, `state_1`, ... (the backbone state's tensors, flattened in a fixed order; zeros at
the first bar); outputs: `score`, `forecast` (B,) as in forecast/compress/export.py, then
`new_state_0`, ... in the same order. The file's metadata `forecast.step_state` lists the state's
shapes at batch 2 and each one's batch axis (free in the graph); `forecast.predict_state` is the
data state, as in the window export.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from forecast.compress.export import FREE_WIDTH, _quiet, _widen


def steppable(model: nn.Module) -> bool:
    """A backbone that declares CAN_STEP with a state of fixed shape (not a growing cache)."""
    kind = type(model.backbone)
    return bool(getattr(kind, "CAN_STEP", False)) and not getattr(kind, "GROWING_STATE", False)


def bar(batch: dict[str, torch.Tensor], t: int) -> dict[str, torch.Tensor]:
    """Position t of every input with a time axis (B, 1, ...); per-sample inputs (ticker) as they are."""
    return {k: v[:, t : t + 1] if v.dim() >= 2 else v for k, v in batch.items()}


class Layout:
    """How the backbone's nested state (lists and tuples of tensors, None for a stateless sublayer)
    maps to the flat list of tensors the ONNX graph takes and gives."""

    def __init__(self, model: nn.Module):
        with torch.no_grad():
            _, state = model.backbone.step(torch.zeros(1, model.backbone.d_model), None)
        leaves, self.spec = tree_flatten(state)
        self.tensor = [isinstance(v, torch.Tensor) for v in leaves]

    def flat(self, state) -> list[torch.Tensor]:
        return [v for v, is_tensor in zip(tree_flatten(state)[0], self.tensor) if is_tensor]

    def nested(self, tensors: list[torch.Tensor]):
        it = iter(tensors)
        return tree_unflatten([next(it) if is_tensor else None for is_tensor in self.tensor], self.spec)


def batch_axes(model: nn.Module) -> list[int]:
    """Each state tensor's batch axis (0 for most; 1 for an LSTM's (layers, B, H))."""
    two, three = initial_state(model, 2), initial_state(model, 3)
    return [next(i for i, (a, b) in enumerate(zip(u.shape, v.shape)) if a != b) for u, v in zip(two, three)]


def initial_state(model: nn.Module, batch_size: int) -> list[torch.Tensor]:
    """The state before the first bar, flattened: zeros of each tensor's shape."""
    with torch.no_grad():
        _, state = model.backbone.step(torch.zeros(batch_size, model.backbone.d_model), None)
    return [torch.zeros_like(v) for v in Layout(model).flat(state)]


class Stepper(nn.Module):
    """(one bar's inputs in `names` order, *state leaves) -> (score, forecast, *new state leaves)."""

    def __init__(self, model: nn.Module, names: list[str], scale: float):
        super().__init__()
        self.model, self.names, self.scale, self.layout = model, list(names), float(scale), Layout(model)

    def forward(self, *flat: torch.Tensor):
        m, n = self.model, len(self.names)
        inputs = dict(zip(self.names, flat[:n]))  # each (B, 1, ...); ticker (B,)
        state = self.layout.nested(list(flat[n:]))
        parts = {name: enc(inputs) for name, enc in m.encoders.items()}  # each (B, 1, D), (B, 1)
        fused = m.fusion.fuse({k: parts[k] for k in m.fused})  # (B, 1, D)
        y, state = m.backbone.step(fused[:, 0], state)  # (B, D)
        raw = m.head(y[:, None], parts)  # (B,), or (B, Q) from a quantile head
        score = raw if raw.dim() == 1 else m.head.point(raw)  # (B,)
        return (score, score * self.scale, *self.layout.flat(state))


def step_torch(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The score (B,) after stepping through every bar of `batch`'s window, in torch."""
    names = list(batch)
    with torch.no_grad():
        leaves = initial_state(model, batch["x"].shape[0])
        stepper = Stepper(model.eval(), names, 1.0)
        for t in range(batch["x"].shape[1]):
            score, _, *leaves = stepper(*bar(batch, t).values(), *leaves)
    return score


def export_step(model: nn.Module, example: dict[str, torch.Tensor], path: Path, state: dict) -> Path:
    """Write the step function of `model` (eval, CPU) as one ONNX file at `path`; returns the path."""
    import onnx

    if not steppable(model):
        raise ValueError(f"{type(model.backbone).__name__} has no fixed-shape step state: no step export")
    model = model.cpu().eval()
    one = {k: v[:2] if k not in FREE_WIDTH else _widen(v[:2]) for k, v in bar(example, 0).items()}
    leaves, axes = initial_state(model, 2), batch_axes(model)
    names = [*one, *(f"state_{i}" for i in range(len(leaves)))]
    batch = torch.export.Dim("batch", min=1)
    shapes = [{0: batch, **({2: torch.export.Dim("ngrams", min=1)} if k in FREE_WIDTH else {})} for k in one]
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            Stepper(model, list(one), state["target_std"]), (*one.values(), *leaves), dynamo=True,
            verbose=False, input_names=names, dynamic_shapes={"flat": (*shapes, *({a: batch} for a in axes))},
            output_names=["score", "forecast", *(f"new_state_{i}" for i in range(len(leaves)))])
    proto = program.model_proto
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del proto.graph.value_info[:]
    for key, value in (("forecast.predict_state", state),
                       ("forecast.step_state", dict(shapes=[list(v.shape) for v in leaves], batch_axes=axes))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return path
