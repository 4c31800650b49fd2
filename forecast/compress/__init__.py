"""`compress`: shrink a trained model to a device's budget and export it to ONNX.

device.py (profiles, this host), search.py (the candidates and the pick), prune.py (torch-pruning),
distill.py (students), quantize.py (onnxruntime int8), export.py (ONNX, parity), latency.py (timing in
separate processes), flops.py (analytic counts), accuracy.py (validation / test scores), report.py,
runtime.py (the ONNX graph as a model `predict` loads) and command.py (the command).
"""
