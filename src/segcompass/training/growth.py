"""Deeper reasoning and perception for a trained model: layers added to the backbone that start as the identity.

SegCompass's concepts are the frozen SAE's codes of ``hidden_states[hook_layer]``; every layer above the hook only
decides which tokens the model writes. :func:`add_identity_decoder_layers` appends layers there that start as the
identity (pre-norm residual blocks whose attention output and MLP down projections are zero), so a trained model gains
depth for its reasoning while it computes exactly what it computed before, its SAE input included, until training
moves the new layers. :func:`add_identity_vision_blocks` does the same for Qwen2.5-VL's vision tower (more depth
for perception; it moves the image tokens' states once trained, as any training of the tower does). The result is a
standard transformers model with more layers: ``save_pretrained`` writes it and ``from_pretrained`` reads it back
with no SegCompass code involved.
"""

from __future__ import annotations

import copy

from torch import nn

from ..utils.logging import get_logger
from .freezing import _language_model

logger = get_logger(__name__)

__all__ = ["add_identity_decoder_layers", "add_identity_vision_blocks"]


def add_identity_decoder_layers(model, num_layers: int) -> int:
    """Append ``num_layers`` decoder layers to ``model.backbone``'s language model, each a copy of its top layer with
    the attention output projection and the MLP down projection set to zero (so each starts as the identity of the
    residual stream), and update the text config (``num_hidden_layers``, ``layer_types``).

    Works on transformers' Qwen2.5-VL and LLaVA (Llama) decoders: layers with ``self_attn.o_proj`` and
    ``mlp.down_proj``. The final norm and the LM head stay where they are, so ``hidden_states[-1]`` and the logits
    are unchanged at first, and ``hidden_states[hook_layer]`` (the SAE's input) is unchanged for good.

    Args:
        model: a :class:`~segcompass.SegCompassForReasoningSegmentation` (or anything with ``.backbone``).
        num_layers: how many layers to add (>= 1).

    Returns:
        the language model's new number of layers.

    Raises:
        ValueError: ``num_layers`` < 1, or the decoder layers lack the projections named above.
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"`num_layers` must be an int >= 1 (decoder layers to add), got {num_layers!r}.")
    language_model = _language_model(model.backbone)
    top = language_model.layers[-1]
    if not (hasattr(getattr(top, "self_attn", None), "o_proj") and hasattr(getattr(top, "mlp", None), "down_proj")):
        raise ValueError(f"Cannot add identity layers to {type(top).__name__}: expected `self_attn.o_proj` and "
                         "`mlp.down_proj` (transformers' Qwen2.5-VL and Llama decoder layers).")
    text_config = language_model.config
    for _ in range(num_layers):
        layer = copy.deepcopy(top)
        layer.self_attn.layer_idx = len(language_model.layers)  # its KV-cache slot
        _zero_output(layer.self_attn.o_proj, layer.mlp.down_proj)
        language_model.layers.append(layer)
    text_config.num_hidden_layers = len(language_model.layers)
    layer_types = getattr(text_config, "layer_types", None)
    if layer_types is not None:
        text_config.layer_types = list(layer_types) + [layer_types[-1]] * num_layers
    logger.info("added %d identity decoder layers on top (now %d)", num_layers, text_config.num_hidden_layers)
    return text_config.num_hidden_layers


def _zero_output(*linears: nn.Linear) -> None:
    for linear in linears:
        nn.init.zeros_(linear.weight)
        if linear.bias is not None:
            nn.init.zeros_(linear.bias)


def add_identity_vision_blocks(model, num_blocks: int) -> int:
    """Append ``num_blocks`` blocks to the Qwen2.5-VL vision tower of ``model.backbone``, each a copy of its top block
    with the attention output projection and the MLP down projection set to zero, of the top block's attention kind
    (full or windowed: ``fullatt_block_indexes``), and update the vision config (``depth``).

    Returns:
        the vision tower's new number of blocks.

    Raises:
        ValueError: ``num_blocks`` < 1, or the backbone has no Qwen2.5-VL vision tower (``.model.visual.blocks``).
    """
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"`num_blocks` must be an int >= 1 (vision blocks to add), got {num_blocks!r}.")
    visual = getattr(getattr(model.backbone, "model", model.backbone), "visual", None)
    if visual is None or not hasattr(visual, "blocks"):
        raise ValueError(f"Cannot add vision blocks to {type(model.backbone).__name__}: only a Qwen2.5-VL vision tower "
                         "(`.model.visual.blocks`) is supported.")
    config = visual.config
    full = list(config.fullatt_block_indexes)
    top_is_full = len(visual.blocks) - 1 in full
    for _ in range(num_blocks):
        block = copy.deepcopy(visual.blocks[-1])
        _zero_output(block.attn.proj, block.mlp.down_proj)
        if top_is_full:
            full.append(len(visual.blocks))
        visual.blocks.append(block)
    config.depth = len(visual.blocks)
    config.fullatt_block_indexes = full
    visual.fullatt_block_indexes = full  # the tower reads its own copy
    logger.info("added %d identity vision blocks on top (now %d)", num_blocks, config.depth)
    return config.depth
