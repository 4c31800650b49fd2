"""Fusion of per-modality embeddings into one (B, L, D) sequence: sum, concat + projection, gated, or
FiLM by the ticker.

Every fusion takes {name: ((B, L, D) embeddings, (B, L) mask)}; a masked step contributes nothing but
the fact that it is missing. Modality dropout (training only) masks a whole modality for a random
share of the samples, so the model learns to predict when a modality is absent at prediction time.
"""
from __future__ import annotations

import torch
from torch import nn

Parts = dict[str, tuple[torch.Tensor, torch.Tensor]]


class Fusion(nn.Module):
    """Modality dropout; subclasses implement `fuse`. `keep` lists modalities never dropped."""

    def __init__(self, modality_dropout: float = 0.0, keep: tuple[str, ...] = ("price",)):
        super().__init__()
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"modality_dropout: must be in [0, 1), got {modality_dropout}")
        self.p, self.keep = modality_dropout, tuple(keep)

    def drop(self, parts: Parts) -> Parts:
        if not self.training or self.p == 0.0:
            return parts
        out = {}
        for name, (e, m) in parts.items():
            if name not in self.keep:
                alive = torch.rand(m.shape[0], 1, device=m.device) >= self.p  # (B, 1): per sample
                m = m & alive  # (B, L)
            out[name] = (e, m)
        return out


class SumFusion(Fusion):
    """Masked sum of the modalities' embeddings, then a LayerNorm."""

    def __init__(self, d_model: int, modalities: list[str] | None = None, modality_dropout: float = 0.0,
                 keep: tuple[str, ...] = ("price",)):
        super().__init__(modality_dropout, keep)
        self.norm = nn.LayerNorm(d_model)

    def fuse(self, parts: Parts) -> torch.Tensor:
        total = sum(e * m[..., None] for e, m in parts.values())  # (B, L, D)
        return self.norm(total)


class _Stacked(Fusion):
    """Fusions that need a fixed modality order: `modalities` is the run's list."""

    def __init__(self, modalities: list[str], modality_dropout: float, keep: tuple[str, ...]):
        super().__init__(modality_dropout, keep)
        self.order = [str(m) for m in modalities]

    def stack(self, parts: Parts) -> tuple[torch.Tensor, torch.Tensor]:
        if sorted(parts) != sorted(self.order):
            raise ValueError(f"fusion: built for modalities {self.order}, got {sorted(parts)}")
        m = torch.stack([parts[n][1] for n in self.order], dim=2)  # (B, L, M)
        e = torch.stack([parts[n][0] for n in self.order], dim=2) * m[..., None]  # (B, L, M, D)
        return e, m


class ConcatFusion(_Stacked):
    """Concatenate the masked embeddings and the masks, project to d_model, LayerNorm."""

    def __init__(self, d_model: int, modalities: list[str], modality_dropout: float = 0.0,
                 keep: tuple[str, ...] = ("price",)):
        super().__init__(modalities, modality_dropout, keep)
        self.proj = nn.Linear(len(self.order) * (d_model + 1), d_model)
        self.norm = nn.LayerNorm(d_model)

    def fuse(self, parts: Parts) -> torch.Tensor:
        e, m = self.stack(parts)  # (B, L, M, D), (B, L, M)
        h = torch.cat([e.flatten(2), m.to(e.dtype)], dim=-1)  # (B, L, M*D + M)
        return self.norm(self.proj(h))  # (B, L, D)


class GatedFusion(_Stacked):
    """Each modality's embedding scaled by a per-channel gate sigmoid(W_m [e_m, context] + b_m), where
    the context is the sum of all available embeddings; the gated embeddings are summed and normalised."""

    def __init__(self, d_model: int, modalities: list[str], modality_dropout: float = 0.0,
                 keep: tuple[str, ...] = ("price",)):
        super().__init__(modalities, modality_dropout, keep)
        M = len(self.order)
        self.w = nn.Parameter(torch.randn(M, 2 * d_model, d_model) / (2 * d_model) ** 0.5)  # (M, 2D, D)
        self.b = nn.Parameter(torch.zeros(M, d_model))  # (M, D)
        self.norm = nn.LayerNorm(d_model)

    def fuse(self, parts: Parts) -> torch.Tensor:
        e, m = self.stack(parts)  # (B, L, M, D), (B, L, M)
        context = e.sum(2, keepdim=True).expand_as(e)  # (B, L, M, D)
        g = torch.sigmoid(torch.einsum("blmk,mkd->blmd", torch.cat([e, context], -1), self.w) + self.b)
        return self.norm((g * e).sum(2))  # (B, L, D)


class FiLMFusion(_Stacked):
    """FiLM by one conditioning modality (the ticker by default): every other modality's embedding is
    scaled and shifted channel-wise by a linear function of the condition's embedding c,
    e_m * (1 + gamma_m(c)) + beta_m(c), so a per-ticker loading on a shared series (macro, calendar)
    is one product away. The modulated embeddings are summed with c and normalised. A masked
    modality contributes nothing; a masked or absent condition gives c = 0, so gamma and beta fall
    back to their biases (the model still predicts without it). Starts as a plain sum (zero init)."""

    def __init__(self, d_model: int, modalities: list[str], condition: str = "ticker",
                 modality_dropout: float = 0.0, keep: tuple[str, ...] = ("price",)):
        super().__init__(modalities, modality_dropout, keep)
        self.cond = self.order.index(condition) if condition in self.order else None
        self.others = [i for i, name in enumerate(self.order) if name != condition]
        self.film = nn.Linear(d_model, 2 * len(self.others) * d_model)  # c -> (gamma, beta) per modality
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.norm = nn.LayerNorm(d_model)

    def fuse(self, parts: Parts) -> torch.Tensor:
        e, m = self.stack(parts)  # (B, L, M, D) masked embeddings, (B, L, M)
        B, L, _, D = e.shape
        c = e[:, :, self.cond] if self.cond is not None else e.new_zeros(B, L, D)  # (B, L, D), 0 if masked
        gamma, beta = self.film(c).view(B, L, 2, len(self.others), D).unbind(2)  # each (B, L, M', D)
        eo, mo = e[:, :, self.others], m[:, :, self.others, None]  # (B, L, M', D), (B, L, M', 1)
        modulated = (eo * (1 + gamma) + beta) * mo  # (B, L, M', D)
        return self.norm(modulated.sum(2) + c)  # (B, L, D)
