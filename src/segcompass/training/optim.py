"""Optimisation of SegCompass: per-component AdamW parameter groups and the one-cycle schedule (paper appendix A.2).

Shared by the supervised warm-up, the GRPO trainer and the recipes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .freezing import image_position_modules, row_masked_parameters

if TYPE_CHECKING:
    from ..modeling_segcompass import SegCompassForReasoningSegmentation

__all__ = ["TRAINABLE_COMPONENTS", "build_param_groups", "one_cycle_scheduler"]

TRAINABLE_COMPONENTS = ("backbone", "concept_interface", "slot_mapper", "mask_decoder")
"""Components with an optimizer group (SAM's image encoder joins only when it is trained; the SAE never)."""


def build_param_groups(
    model: SegCompassForReasoningSegmentation,
    learning_rate: float,
    weight_decay: float,
    multipliers: dict[str, float],
    *,
    train_vision_encoder: bool = False,
    decay_parameter_names: set[str] | None = None,
) -> list[dict]:
    """AdamW parameter groups of a SegCompass model: one pair (decay / no decay) per component, each with
    ``lr = learning_rate · multiplier``. The SAE is never trained; SAM's image encoder only with
    ``train_vision_encoder`` (at the backbone's rate); ``image_positions`` (where the model has them) at the backbone's
    rate. A multiplier of 0 freezes the component.

    Args:
        multipliers: ``{"backbone": 1.0, "concept_interface": 25.0, "slot_mapper": 80.0, "mask_decoder": 10.0}``
            (missing names default to 1.0).
        decay_parameter_names: names (relative to ``model``) that get weight decay; default: parameters with at
            least 2 dimensions that are not norms.

    Returns:
        list of dicts with ``params``, ``lr``, ``weight_decay``, ``name`` (empty groups are left out).
    """
    model.sae.requires_grad_(False)
    components = list(TRAINABLE_COMPONENTS)
    if image_position_modules(model):  # part of the policy's image input: the backbone's rate
        components.append("image_positions")
        multipliers = {**multipliers, "image_positions": multipliers.get("backbone", 1.0)}
    if train_vision_encoder:
        components.append("vision_encoder")
        multipliers = {**multipliers, "vision_encoder": multipliers.get("backbone", 1.0)}
    else:
        model.vision_encoder.requires_grad_(False)
    groups = []
    for component in components:
        module = getattr(model, component)
        multiplier = float(multipliers.get(component, 1.0))
        if multiplier == 0:
            module.requires_grad_(False)
            continue
        decay, no_decay = [], []
        row_masked = row_masked_parameters(module)
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            full = f"{component}.{name}"
            if name in row_masked:  # rows opened one by one: weight decay would move the closed rows
                no_decay.append(param)
            elif decay_parameter_names is not None:
                (decay if full in decay_parameter_names else no_decay).append(param)
            else:
                (decay if param.ndim >= 2 and "norm" not in name.lower() else no_decay).append(param)
        lr = learning_rate * multiplier
        if decay:
            groups.append({"params": decay, "lr": lr, "weight_decay": weight_decay, "name": f"{component}/decay"})
        if no_decay:
            groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{component}/no_decay"})
    if not groups:
        raise ValueError("No trainable parameters: every component is frozen (all lr multipliers are 0?).")
    return groups


def one_cycle_scheduler(optimizer: torch.optim.Optimizer, num_training_steps: int, final_div_factor: float = 6.7,
                        warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """One-cycle schedule as a ``LambdaLR``: linear warm-up over ``warmup_steps`` (paper: none), then cosine
    annealing from each group's peak ``lr`` (reached at the first post-warm-up step) to ``lr / final_div_factor`` at
    the last step (``num_training_steps - 1``) and after."""
    total, warmup = max(int(num_training_steps), 1), max(int(warmup_steps), 0)
    floor = 1.0 / float(final_div_factor)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(max(step - warmup, 0) / max(total - warmup - 1, 1), 1.0)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
