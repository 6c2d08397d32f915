"""Which backbone weights train: freeze everything that computes the SAE's input, train only chosen token rows.

The SAE is pretrained on ``hidden_states[L]`` of a fixed backbone and frozen inside SegCompass. If the weights that
compute those states keep training (the ViT, the token embeddings, decoder layers ``0 .. L-1``), the SAE's input
drifts and its concepts stop meaning what they meant: :func:`freeze_backbone_through_hook_layer` stops that.
The concentration (slot) tokens' embedding rows are the one part of the embedding matrix SegCompass needs trained
(random rows make the K slots nearly alike): :func:`train_token_embedding_rows` opens just those rows.
Where the weights below the hook must train after all (perception is only learned there),
:func:`hook_state_anchor_loss` is the soft form of the freeze: it keeps the hook-layer states of the text tokens where
a frozen copy of the backbone puts them, and leaves the image tokens free.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..utils.logging import get_logger

logger = get_logger(__name__)

__all__ = ["freeze_backbone_through_hook_layer", "hook_state_anchor_loss", "image_position_modules", "policy_modules",
           "policy_parameters", "restored_requires_grad", "train_token_embedding_rows", "row_masked_parameters"]

_ROW_MASK = "_segcompass_trainable_rows"
_HANDLE = "_segcompass_row_mask_hook"


def _language_model(backbone: nn.Module) -> nn.Module:
    inner = getattr(backbone, "model", backbone)
    language_model = getattr(inner, "language_model", None)
    if language_model is None or not hasattr(language_model, "layers"):
        raise ValueError(
            f"Cannot find the decoder layers of {type(backbone).__name__} (expected `.model.language_model.layers`, "
            "as in transformers' Qwen2.5-VL and LLaVA classes)."
        )
    return language_model


def _vision_tower(backbone: nn.Module) -> nn.Module | None:
    inner = getattr(backbone, "model", backbone)
    for name in ("visual", "vision_tower"):
        if getattr(inner, name, None) is not None:
            modules = [getattr(inner, name)]
            projector = getattr(inner, "multi_modal_projector", None)
            return nn.ModuleList(modules + ([projector] if projector is not None else []))
    return None


def image_position_modules(model) -> list[nn.Module]:
    """``[model.image_positions]`` where the model has them (added to the vision tower's output by a hook, so they
    train and freeze with it), else ``[]``."""
    positions = getattr(model, "image_positions", None)
    return [] if positions is None else [positions]


def policy_modules(model) -> list[nn.Module]:
    """The modules whose weights make the backbone's (the policy's) forward: the backbone and
    :func:`image_position_modules`."""
    return [model.backbone, *image_position_modules(model)]


def policy_parameters(model) -> list[nn.Parameter]:
    """The trainable (``requires_grad``) parameters of :func:`policy_modules`."""
    return [p for module in policy_modules(model) for p in module.parameters() if p.requires_grad]


def freeze_backbone_through_hook_layer(model) -> int:
    """Freeze every backbone weight that computes ``hidden_states[hook_layer]``: the vision tower (and LLaVA's
    projector, and the model's ``image_positions`` where it has them), the token embeddings and decoder layers
    ``0 .. hook_layer - 1``. The layers above keep training.

    With tied input/output embeddings (tiny models) the LM head is frozen with them. Use
    :func:`train_token_embedding_rows` afterwards to train the concentration tokens' rows.

    Returns:
        the number of parameter tensors that were trainable and are now frozen.
    """
    hook_layer = model.config.sae_config.hook_layer
    language_model = _language_model(model.backbone)
    modules = [language_model.embed_tokens, *language_model.layers[:hook_layer]]
    if hook_layer >= len(language_model.layers) and getattr(language_model, "norm", None) is not None:
        modules.append(language_model.norm)  # the last hidden_states entry is taken after the final norm
    vision = _vision_tower(model.backbone)
    if vision is not None:
        modules.append(vision)
    modules += image_position_modules(model)  # added to the vision tower's output
    frozen = 0
    for module in modules:
        for param in module.parameters():
            if param.requires_grad:
                param.requires_grad_(False)
                frozen += 1
    logger.info("froze %d backbone tensors that compute hidden_states[%d] (the SAE's input)", frozen, hook_layer)
    return frozen


def train_token_embedding_rows(model, token_ids: Iterable[int] | None = None) -> torch.utils.hooks.RemovableHandle:
    """Train only the embedding rows of ``token_ids`` (default: the K concentration tokens), the rest stays fixed.

    The embedding matrix gets ``requires_grad=True`` and a gradient hook that zeroes every other row. AdamW moves a
    row only by its gradient and by weight decay, so the parameter is marked (see :func:`row_masked_parameters`)
    and :func:`~segcompass.training.sft.build_param_groups` puts it in a group without weight decay.

    Returns:
        the hook's handle (``handle.remove()`` opens every row again).
    """
    if token_ids is None:
        token_ids = model.config.slot_token_ids
    ids = sorted({int(i) for i in token_ids or []})
    weight = model.get_input_embeddings().weight
    if not ids or min(ids) < 0 or max(ids) >= weight.shape[0]:
        raise ValueError(
            f"token ids {ids} must be non-empty and inside the embedding matrix (0..{weight.shape[0] - 1}); set "
            "config.slot_token_ids with the processor helpers first."
        )
    rows = torch.zeros(weight.shape[0], 1)  # (vocab, 1)
    rows[ids] = 1.0
    previous = getattr(weight, _HANDLE, None)
    if previous is not None:  # one mask per parameter: calling again replaces it
        previous.remove()
    weight.requires_grad_(True)
    setattr(weight, _ROW_MASK, ids)
    # the mask follows the gradient's device and dtype (the model may move after this call)
    handle = weight.register_hook(lambda grad: grad * rows.to(grad.device, grad.dtype))
    setattr(weight, _HANDLE, handle)
    logger.info("training embedding rows %s only", ids)
    return handle


@contextmanager
def restored_requires_grad(module: nn.Module) -> Iterator[None]:
    """Freeze or open parameters of ``module`` inside the block; every ``requires_grad`` flag is as it was on entry
    afterwards, also when the block raises."""
    flags = {name: param.requires_grad for name, param in module.named_parameters()}
    try:
        yield
    finally:
        for name, param in module.named_parameters():
            param.requires_grad_(flags[name])


def row_masked_parameters(module: nn.Module) -> set[str]:
    """Names of ``module``'s parameters opened row by row by :func:`train_token_embedding_rows` (no weight decay)."""
    return {name for name, param in module.named_parameters() if getattr(param, _ROW_MASK, None)}


def hook_state_anchor_loss(hidden: torch.Tensor, reference: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Relative squared distance between the SAE's input ``hidden_states[L]`` of a training backbone and of a frozen
    reference copy, on the chosen tokens: ``Σ mask · ||h - h_ref||² / Σ mask · ||h_ref||²``.

    With the text tokens (prompt and reasoning) as ``token_mask``, training the vision tower and the decoder layers
    below the hook with this loss beside the next-token loss lets the image tokens' states change (perception) while
    the concepts the SAE reads from a given reasoning text stay (close to) what the heads were trained on.

    Args:
        hidden (`torch.Tensor` of shape `(B, T, D)`): ``hidden_states[L]`` of the backbone being trained.
        reference (`torch.Tensor` of shape `(B, T, D)`): the same of the frozen reference (no gradient needed).
        token_mask (`torch.Tensor` of shape `(B, T)`): which tokens count (bool or 0/1).

    Returns:
        a 0-d float32 tensor (0 when no token is chosen or the reference is all zeros there).

    Raises:
        ValueError: ``hidden`` and ``reference`` differ in shape, or ``token_mask`` is not their ``(B, T)``.
    """
    if hidden.shape != reference.shape or hidden.dim() != 3:
        raise ValueError(f"`hidden` {tuple(hidden.shape)} and `reference` {tuple(reference.shape)} must both be "
                         "(B, T, D) hidden_states[L] of the same batch.")
    if tuple(token_mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"`token_mask` must be (B, T) = {tuple(hidden.shape[:2])}, got {tuple(token_mask.shape)}.")
    weight = token_mask.to(device=hidden.device, dtype=torch.float32).unsqueeze(-1)  # (B, T, 1)
    reference = reference.detach().float()
    error = (((hidden.float() - reference) ** 2) * weight).sum()
    return error / (((reference ** 2) * weight).sum()).clamp_min(1e-12)
