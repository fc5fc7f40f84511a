"""LoRA for open_clip transformers: low-rank updates on attention and MLP weights, base frozen.

``W' = W + (alpha / r) * B @ A`` with ``A`` (r, in) random and ``B`` (out, r) zero, so an adapted
model starts identical to its base. open_clip's blocks use ``nn.MultiheadAttention``, which reads
``in_proj_weight`` / ``out_proj.weight`` as tensors rather than calling sub-modules, so the update is
attached with ``torch.nn.utils.parametrize`` (works for those tensors and plain ``nn.Linear`` alike).
:func:`merge_lora` bakes the updates in, leaving a plain open_clip model to save.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

# (module type, weight attribute) pairs inside open_clip transformer blocks that get an adapter
_TARGETS = ((nn.MultiheadAttention, "in_proj_weight"), (nn.Linear, "weight"))


class LoRADelta(nn.Module):
    """Parametrization adding a trainable low-rank update to a frozen weight (out, in)."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float):
        super().__init__()
        self.lora_a = nn.Parameter(torch.empty(rank, in_features))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scaling = alpha / rank

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Return ``weight + scaling * B @ A``."""
        return weight + self.scaling * (self.lora_b @ self.lora_a).to(weight.dtype)


def _blocks(model: nn.Module):
    from open_clip.transformer import ResidualAttentionBlock

    return [m for m in model.modules() if isinstance(m, ResidualAttentionBlock)]


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0) -> list[nn.Parameter]:
    """Freeze ``model`` and add LoRA to every attention/MLP weight of its transformer blocks.

    Returns the new trainable parameters (only these should go to the optimiser).
    """
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    blocks = _blocks(model)
    if not blocks:
        raise ValueError("no open_clip ResidualAttentionBlock found; LoRA needs open_clip transformers")
    for param in model.parameters():
        param.requires_grad_(False)
    trainable: list[nn.Parameter] = []
    for block in blocks:
        for module in block.modules():
            for kind, name in _TARGETS:
                if isinstance(module, kind) and not parametrize.is_parametrized(module, name):
                    weight = getattr(module, name)
                    delta = LoRADelta(weight.shape[0], weight.shape[1], rank, alpha).to(weight.device)
                    parametrize.register_parametrization(module, name, delta)
                    trainable += [delta.lora_a, delta.lora_b]
    return trainable


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA parameters currently attached to ``model``."""
    return [p for m in model.modules() if isinstance(m, LoRADelta) for p in (m.lora_a, m.lora_b)]


def merge_lora(model: nn.Module) -> nn.Module:
    """Bake every LoRA update into its base weight and remove the parametrizations (in place)."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model
