"""The model as an MLflow pyfunc, for `mlflow.pyfunc.load_model` and `mlflow models serve`, and the
data state `predict` needs, both logged by train beside the run's `model` artifact.

MLflow's pytorch flavour takes one tensor (it refuses dict inputs, mlflow/mlflow#13931), but a model
with several modalities takes several. So `ForecastModel` is a custom `PythonModel` whose input is a
dict of named arrays, the batch keys the data module produces (already normalised, as
forecast/inference/features.py builds them from stored statistics):

    x              float32 (B, L, F)  price features        ticker         int64 (B,) vocabulary ids (0: unseen)
    calendar       float32 (B, L, 30)                       exog, exog_mask  float32 / bool (B, L, 2S)
    news_tokens    int32 (B, L, K) hashed n-gram ids        news_weights   float32 (B, L, K)
    news_emb       float32 (B, L, 384) sentence embeddings  news_emb_mask  bool (B, L)

(the ones of the model's modalities; news enters as token ids or pre-embedded, K may vary). A
`TensorSpec` signature names each; the output is a frame of `forecast` (log-return units) and
`direction` (its sign) per sample, plus `q10`, `q50`, ... when the model has a quantile head.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema, TensorSpec

from forecast.tracking.runs import requirements

STATE = "predict/state.json"  # run artifact: MarketData.predict_state()
VARIABLE_WIDTH = ("news_tokens", "news_weights")  # last axis: the most n-grams of a session in the batch


class ForecastModel(mlflow.pyfunc.PythonModel):
    # The TensorSpec signature checks the inputs; MLflow's type-hint validation (and its warning that
    # `predict` has no type hints) has no type for a dict of arrays, and this flag opts out of it.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        import torch

        self.module = torch.load(context.artifacts["module"], map_location="cpu", weights_only=False).eval()
        from forecast.evaluation.calibration import Calibration

        state = json.loads(Path(context.artifacts["state"]).read_text())
        self.scale, self.calibration = state["target_std"], Calibration.from_state(state.get("calibration"))
        ret = state["features"].index("ret")  # the window's daily log return, to undo its normalisation
        self.ret = (ret, state["feature_mean"][ret], state["feature_std"][ret])

    def predict(self, context, model_input, params=None):
        import pandas as pd
        import torch

        batch = {k: torch.as_tensor(np.asarray(v)) for k, v in model_input.items()}  # each (B, ...)
        # JSON carries no float width: a served request's floats arrive as float64, the module's weights are float32
        batch = {k: v.float() if v.is_floating_point() else v for k, v in batch.items()}
        with torch.no_grad():
            raw = self.module(**batch).double()  # (B,), or (B, Q) from a quantile head
        point = (raw if raw.dim() == 1 else self.module.head.point(raw)).numpy() * self.scale  # (B,) log returns
        point = self.calibration.point(point)  # as train fitted it on validation
        out = {"forecast": point, "direction": np.sign(point).astype(np.int64)}
        if raw.dim() == 2:
            sigma = self.volatility(batch["x"]) if self.calibration.needs_volatility else None  # (B,)
            q = self.calibration.quantile(raw.numpy() * self.scale, sigma)
            out.update({f"q{round(tau * 100)}": q[:, j] for j, tau in enumerate(quantile_levels(self.module))})
        return pd.DataFrame(out)

    def volatility(self, x) -> np.ndarray:
        """(B,) each window's EWMA volatility from its own returns (x (B, L, F), normalised): a served
        request carries no longer history (calibration.window_volatility)."""
        from forecast.evaluation.calibration import window_volatility

        j, mean, std = self.ret
        return window_volatility(x[:, :, j].double().numpy() * std + mean, self.calibration.horizon)


def quantile_levels(module) -> list[float]:
    """The levels of a quantile head (`q10`, `q50`, `q90` outputs), none for a point head."""
    return list(getattr(module.head, "taus", []))


def signature(example: dict[str, np.ndarray], taus: list[float]) -> ModelSignature:
    """Named TensorSpecs with a free batch axis (and a free n-gram axis for news token inputs)."""
    specs = [TensorSpec(v.dtype, (-1, *v.shape[1:-1], -1) if k in VARIABLE_WIDTH else (-1, *v.shape[1:]), k)
             for k, v in example.items()]
    outputs = [ColSpec("double", "forecast"), ColSpec("long", "direction"),
               *[ColSpec("double", f"q{round(t * 100)}") for t in taus]]
    return ModelSignature(inputs=Schema(specs), outputs=Schema(outputs))


def log_pyfunc(model, state: dict, batch: dict) -> str:
    """Log the data state (`predict/state.json`) and the pyfunc (`pyfunc`, its input example two
    samples of `batch`); tag the run with the pyfunc's URI and return it."""
    import torch

    from forecast.model.forecaster import NOT_INPUTS

    example = {k: v[:2].numpy() for k, v in batch.items() if k not in NOT_INPUTS}
    mlflow.log_dict(state, STATE)
    with tempfile.TemporaryDirectory() as tmp:
        files = {"module": Path(tmp) / "module.pt", "state": Path(tmp) / "state.json"}
        torch.save(model.cpu().eval(), files["module"])
        files["state"].write_text(json.dumps(state))
        info = mlflow.pyfunc.log_model(name="pyfunc", python_model=ForecastModel(),
                                       artifacts={k: str(v) for k, v in files.items()},
                                       signature=signature(example, quantile_levels(model)), input_example=example,
                                       pip_requirements=requirements())
    mlflow.set_tag("forecast.pyfunc_uri", info.model_uri)
    return info.model_uri
