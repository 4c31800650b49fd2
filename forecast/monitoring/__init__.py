"""Monitoring after daily predictions, in the manner of darts' `ad` package: scorers turn the stored
predictions and inputs into series (realised.py: IC, hit rate, strategy return; drift.py: PSI and KS
of the inputs), detectors turn series into alarms (detectors.py: a calibrated Page-Hinkley test),
alerts.py stores them, retrain.py answers a performance alarm with a champion/challenger retrain.
`python -m forecast monitor` (forecast/inference/monitor.py) runs them in that order."""
