"""Calibrate the Page-Hinkley threshold of `monitor` (conf/monitor.yaml detector.threshold) for at
most 1 false alarm per 10,000 sessions (so that a 1,000-session stretch without a break has at most
one false alarm with a wide margin), on two references, written to calibration.json beside this file:

- stationary: a N(0, 1) series, what the standardised rank IC (realised.standardised) is when the
  relation does not change;
- validation: the standardised rank IC of real trained models over their own validation periods
  (the models of breaks.py: their forecasts for the validation sessions, predicted with `predict
  since=<val_start>` into a separate database), shuffled: a permutation keeps the marginal
  distribution (fat tails, the model's IC level) and destroys any change.

    python experiments/monitoring/calibrate.py WORKDIR   (WORKDIR of breaks.py)
"""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from forecast.inference import predictions
from forecast.monitoring import detectors, realised

HERE = Path(__file__).resolve().parent
RATE, STREAMS, LENGTH = 1e-4, 1000, 1000


def validation_series(work: Path) -> np.ndarray:
    """The standardised rank IC of the workdir's version-1 model over its validation period."""
    from forecast.tracking import runs

    uri = f"sqlite:///{work}/mlflow.db"
    _, _, run_id = runs.resolve_model(uri, "models:/forecast/1")
    state = runs.load_predict_state(run_id)
    last = dt.date.fromisoformat(state["test_start"]) - dt.timedelta(days=1)
    db = f"sqlite:///{work}/validation.db"
    subprocess.run([sys.executable, "-m", "forecast", "predict", "catch_up=true", f"since={state['val_start']}",
                    f"date={last}", "model=models:/forecast/1", f"logger.tracking_uri={uri}", f"predictions.url={db}"],
                   check=True, capture_output=True)
    engine = predictions.connect(db)
    frame = realised.stored(engine, "forecast", "1", state["horizon"], last)
    frame = realised.fill(engine, f"{work}/store", frame, "forecast", "1", state["horizon"])
    return realised.standardised(realised.session_scores(frame, 20, 5.0, state["horizon"]))


def main() -> None:
    work = Path(sys.argv[1])
    series = [validation_series(w) for w in sorted(work.iterdir()) if (w / "mlflow.db").exists()]
    pooled = np.concatenate([s - np.nanmean(s) for s in series])  # each model's own level removed
    out = dict(command="python experiments/monitoring/calibrate.py WORKDIR", rate=RATE, streams=STREAMS,
               length=LENGTH, validation_sessions=int(np.isfinite(pooled).sum()), models=len(series),
               validation_std=float(np.nanstd(pooled)))
    rng = np.random.default_rng(0)
    out["stationary"] = detectors.calibrate(rng.standard_normal(100_000), RATE, streams=STREAMS, length=LENGTH)
    out["validation"] = detectors.calibrate(pooled, RATE, streams=STREAMS, length=LENGTH)
    out["chosen"] = max(out["stationary"]["threshold"], out["validation"]["threshold"])
    print(json.dumps(out))
    (HERE / "calibration.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
