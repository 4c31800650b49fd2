"""Serving through MLflow: the pyfunc train logs beside the model loads with mlflow.pyfunc.load_model,
takes a dict of named arrays (one per model input) checked against its TensorSpec signature, and
`mlflow models serve` answers a JSON POST on loopback with the same forecasts."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException
from test_predict import trained_model

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(model info, the champion's URI, the loaded pyfunc): the registered version is the pyfunc."""
    model = trained_model(tmp_path_factory)
    mlflow.set_tracking_uri(model["tracking_uri"])
    uri = "models:/forecast@champion"
    return model, uri, mlflow.pyfunc.load_model(uri)


def test_pyfunc_predicts_its_input_example(served):
    model, _, pyfunc = served
    example = pyfunc.input_example
    assert {k: v.dtype.name for k, v in example.items()} == {"x": "float32", "ticker": "int64", "calendar": "float32"}
    assert sorted(s.name for s in pyfunc.metadata.signature.inputs.inputs) == ["calendar", "ticker", "x"]
    out = pyfunc.predict(example)
    module = mlflow.pytorch.load_model(f"runs:/{model['run_id']}/model", map_location="cpu")
    state = mlflow.artifacts.load_dict(f"runs:/{model['run_id']}/predict/state.json")
    with torch.no_grad():
        expected = module(**{k: torch.as_tensor(v) for k, v in example.items()}).double().numpy() * state["target_std"]
    assert np.allclose(out["forecast"], expected, rtol=0, atol=1e-9)
    assert (out["direction"] == np.sign(expected)).all()
    with pytest.raises(MlflowException, match="calendar"):
        pyfunc.predict({k: v for k, v in example.items() if k != "calendar"})  # the signature names every input


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_models_serve_answers_a_json_post(served, tmp_path):
    model, uri, pyfunc = served
    port, bin_dir = free_port(), Path(sys.executable).parent  # uvicorn must be on PATH: the venv's bin
    env = dict(os.environ, MLFLOW_TRACKING_URI=model["tracking_uri"], MLFLOW_DISABLE_TELEMETRY="true",
               PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        base, deadline = f"http://127.0.0.1:{port}", time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/ping", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(0.5)
        example = pyfunc.input_example
        body = json.dumps({"inputs": {k: v.tolist() for k, v in example.items()}}).encode()
        request = urllib.request.Request(f"{base}/invocations", data=body, headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=30).read())["predictions"]
        assert np.allclose([a["forecast"] for a in answer], pyfunc.predict(example)["forecast"], rtol=0, atol=1e-7)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


class Exogenous(torch.nn.Module):
    """A float32 module of two float inputs, as a model with exogenous series has."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)

    def forward(self, x, exog):
        return self.lin(torch.cat([x[:, -1], exog[:, -1]], dim=1)).squeeze(-1)  # (B,)


def test_float64_inputs_of_a_json_request_are_served_as_float32():
    """A served request's floats arrive as float64 (JSON has no float width): the same forecasts."""
    from forecast.evaluation.calibration import Calibration
    from forecast.tracking.serving import ForecastModel

    served = ForecastModel()
    served.calibration = Calibration()  # none stored: the raw forecast
    served.module, served.scale = Exogenous().eval(), 0.01
    rng = np.random.default_rng(0)
    x, exog = rng.standard_normal((4, 8, 2)).astype(np.float32), rng.standard_normal((4, 8, 1)).astype(np.float32)
    narrow = served.predict(None, {"x": x, "exog": exog})
    wide = served.predict(None, {"x": x.astype(np.float64), "exog": exog.astype(np.float64)})
    np.testing.assert_allclose(wide["forecast"].to_numpy(), narrow["forecast"].to_numpy(), rtol=1e-6)
