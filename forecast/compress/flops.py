"""FLOPs of one forecast, counted analytically per module (a multiply-add is 2 FLOPs).

`torch.utils.flop_counter.FlopCounterMode` counts 0 for `nn.LSTM`, for CPU
`scaled_dot_product_attention` and for fused Transformer paths in torch 2.13 (and fvcore misses the
LSTM too), so each module that does the work is counted from the shapes it sees in one forward:
- Linear: 2 * in * out per position; Embedding(Bag): 2 * n-grams * dim (a weighted sum);
- LSTM: 2 * 4 * hidden * (in + hidden) per position;
- causal self-attention: 2 * 2 * L^2 * D (scores and weighted values; SDPA computes the full square);
- chunked linear attention: 2 * 2 * L * H * hd^2 (state update and read-out; its projections are Linear);
- Mamba's selective scan: 2 * 3 * L * E * N, its causal conv 2 * L * E * K;
- Mamba-2's SSD: 2 * 3 * L * H * headdim * N;
- gated fusion: 2 * L * M * 2D * D (the einsum of the gates).
Norms, activations and element-wise products are left out (a few % at these widths).
`flop_counter_check` gives FlopCounterMode's count for the cross-check the tests make.
"""
from __future__ import annotations

import torch
from torch import nn


def _linear(m: nn.Linear, x: torch.Tensor) -> float:
    return 2.0 * m.in_features * m.out_features * (x.numel() // m.in_features)


def _lstm(m: nn.LSTM, x: torch.Tensor) -> float:
    positions = x.numel() // m.input_size
    return 2.0 * 4 * m.hidden_size * (m.input_size + m.hidden_size) * positions


def _bag(m: nn.EmbeddingBag, ids: torch.Tensor) -> float:
    return 2.0 * ids.numel() * m.embedding_dim


def _attention(m, x: torch.Tensor) -> float:
    B, L, D = x.shape
    return 2.0 * 2 * B * L * L * D


def _linear_attention(m, x: torch.Tensor) -> float:
    B, L, _ = x.shape
    return 2.0 * 2 * B * L * m.n_heads * m.hd ** 2


def _mamba(m, x: torch.Tensor) -> float:
    B, L, _ = x.shape
    return 2.0 * 3 * B * L * m.d_inner * m.d_state + 2.0 * B * L * m.d_inner * m.d_conv


def _mamba2(m, x: torch.Tensor) -> float:
    B, L, _ = x.shape
    return 2.0 * 3 * B * L * m.n_heads * m.headdim * m.d_state


def _gated(m, parts) -> float:
    M, two_d, D = m.w.shape
    B, L = next(iter(parts.values()))[0].shape[:2]
    return 2.0 * B * L * M * two_d * D


def counters() -> dict[type, callable]:
    from forecast.model.backbones.linear_attention import LinearAttentionMixer
    from forecast.model.backbones.mamba import MambaMixer
    from forecast.model.backbones.mamba2 import Mamba2Mixer
    from forecast.model.backbones.transformer import CausalSelfAttention

    return {nn.Linear: _linear, nn.LSTM: _lstm, nn.EmbeddingBag: _bag, CausalSelfAttention: _attention,
            LinearAttentionMixer: _linear_attention, MambaMixer: _mamba, Mamba2Mixer: _mamba2}


def flops_per_forecast(model: nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """Analytic FLOPs of `model(**batch)` divided by the batch size."""
    from forecast.model.fusion import GatedFusion

    total, hooks, table = [0.0], [], counters()
    for module in model.modules():
        count = table.get(type(module))
        if count is not None:
            hooks.append(module.register_forward_hook(lambda m, args, out, c=count: total.__setitem__(
                0, total[0] + c(m, args[0]))))
    if isinstance(getattr(model, "fusion", None), GatedFusion):
        fusion = model.fusion
        hooks.append(_patch_fuse(fusion, lambda parts: total.__setitem__(0, total[0] + _gated(fusion, parts))))
    try:
        with torch.no_grad():
            n = len(model(**batch))
    finally:
        for h in hooks:
            h() if callable(h) else h.remove()
    return total[0] / n


def _patch_fuse(fusion, record):
    """Count GatedFusion.fuse (a method, not a forward) while the model runs; returns the undo."""
    original = fusion.fuse

    def fuse(parts):
        record(parts)
        return original(parts)

    fusion.fuse = fuse
    return lambda: delattr(fusion, "fuse")


def flop_counter_check(model: nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """FlopCounterMode's FLOPs per forecast (misses LSTM and CPU SDPA: a cross-check only)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        n = len(model(**batch))
    return counter.get_total_flops() / n
