"""Causal sequence backbones (B, L, D) -> (B, L, D) with a recurrent `step` for inference.

mamba (default), mamba2, linear_attention, transformer, lstm; each is built by Hydra from
conf/model/backbone/<name>.yaml. Nothing here imports CUDA kernels at import time.
"""
