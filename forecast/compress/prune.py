"""Structured pruning that removes channels (torch-pruning), not masks that leave zeros.

`torch.nn.utils.prune` only multiplies weights by a mask: the tensors keep their shape, so neither
the file nor the latency shrinks. torch-pruning (1.6, MIT) builds the dependency graph of a module and
removes whole channels from every layer that shares them. Pruned here: the hidden channels of each
position-wise feed-forward sublayer (`MLP`: fc's outputs and proj's inputs, about two thirds of a
Transformer or linear-attention block) and of the encoders' two-layer MLPs, by the L2 norm of each
channel's group of weights. The residual width (d_model) is left alone: narrowing it is an
architecture change, which distillation into a narrower student does. A pruned model is then
fine-tuned by distillation (distill.py), as pruning costs accuracy until it is.
"""
from __future__ import annotations

import torch
from torch import nn

from forecast.model.backbones.block import MLP


def hidden_layers(model: nn.Module) -> list[tuple[nn.Module, nn.Linear, nn.Linear]]:
    """(module, first, last) of every two-layer MLP whose hidden channels can go."""
    found = []
    for module in model.modules():
        if isinstance(module, MLP):
            found.append((module, module.fc, module.proj))
        elif isinstance(module, nn.Sequential) and len(module) >= 3 and all(
                isinstance(module[i], nn.Linear) for i in (0, -1)):
            found.append((module, module[0], module[-1]))
    return found


def prune(model: nn.Module, ratio: float) -> nn.Module:
    """Remove `ratio` of the hidden channels of every feed-forward sublayer of `model`, in place."""
    import torch_pruning as tp

    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"prune ratio must be in [0, 1), got {ratio}")
    if ratio == 0.0:
        return model
    for module, first, last in hidden_layers(model):
        example = torch.zeros(1, first.in_features)
        pruner = tp.pruner.MetaPruner(module, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=ratio, ignored_layers=[last])
        pruner.step()
    return model


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
