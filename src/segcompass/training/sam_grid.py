"""A finer SAM grid for a trained model: the same SAM input cut into smaller patches.

SAM's image encoder cuts its ``S x S`` input into ``p x p`` patches, so the image embedding is an ``h x h`` grid
(``h = S / p``) and the decoder's masks and the slot heatmaps live on ``4h x 4h``. Small objects suffer on a coarse
grid: on the embedded model before its grid was refined (96 px input, 8 px patches, 12 x 12 embeddings), with the
reference reasoning, 22 % of the targets of 120-250 px got no slot with IoU > 0.5, against 9 % of those of 250-600 px.
The embedded model now has 4 px patches (24 x 24 embeddings, 96 x 96 masks).

:func:`refine_sam_grid` returns a copy of a model whose SAM encoder takes ``p / f`` px patches of the same input
(``f`` times the grid, ``f`` times the mask grid), every weight carried over:

- the patch projection: each ``p/f x p/f`` kernel is the sum of the old kernel's ``f x f`` blocks, so a new patch is
  projected exactly as the old one would project it upsampled ``f`` times (nearest);
- the absolute position embedding: resampled to the new grid (bicubic);
- the relative position tables: windowed layers get windows ``f`` times wider in patches (the same pixel span) and
  every table is resampled so that a distance of ``d`` new patches reads the old table at ``d / f`` (linear);
- the mask refiner, which reads ``r x r`` pixel blocks per mask cell (``r = S / 4h``), starts again as the identity
  (its input width depends on ``r``); every other module (backbone, SAE, concept path, decoder, confidence head) is
  copied as it is.

The copy is a standard model of the same class: ``save_pretrained`` / ``from_pretrained`` round-trip it. What the
encoder and the decoder learned at the old grid needs training again at the new one (the recipe's concept stage: a
continued run with another ``sam_patch_size`` calls this).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..utils.logging import get_logger

logger = get_logger(__name__)

__all__ = ["refine_sam_grid", "refinement_factor", "resample_relative_positions"]

_ENCODER = "vision_encoder.vision_encoder."  # SegCompass's SamVisionModel -> its SamVisionEncoder


def resample_relative_positions(table: torch.Tensor, factor: int, length: int) -> torch.Tensor:
    """A relative position table ``(2n - 1, d)`` (distances ``-(n-1) .. n-1`` in old patches) as a table ``(length,
    d)`` in patches ``factor`` times smaller: entry ``d'`` is the old table at ``d' / factor``, linearly interpolated
    (clamped at the ends)."""
    old_half, new_half = (table.shape[0] - 1) / 2, (length - 1) / 2
    position = ((torch.arange(length, dtype=torch.float64) - new_half) / factor + old_half).clamp(0, 2 * old_half)
    low = position.floor().long().clamp(max=table.shape[0] - 1)
    high = (low + 1).clamp(max=table.shape[0] - 1)
    weight = (position - low).to(table.dtype)[:, None]  # (length, 1)
    return table[low] * (1 - weight) + table[high] * weight  # (length, d)


def refinement_factor(old: int, patch_size) -> int:
    """``old / patch_size`` when ``patch_size`` is an int smaller than the current SAM patch side ``old`` that divides
    it (the one check of a grid refinement), else a ValueError naming it."""
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1 or patch_size >= old \
            or old % patch_size:
        raise ValueError(f"`patch_size` must be an int that divides the current SAM patch side {old} and is smaller "
                         f"(e.g. {old // 2} for twice the grid), got {patch_size!r}.")
    return old // patch_size


def refine_sam_grid(model, patch_size: int, *, mask_refiner_hidden_size: int | None = None):
    """A copy of ``model`` whose SAM image encoder takes ``patch_size`` px patches of the same input (see the module
    docstring for how each weight carries over). ``model`` is left as it was.

    Args:
        model: a :class:`~segcompass.SegCompassForReasoningSegmentation`.
        patch_size: the new patch side; must divide the current one (and so the SAM input side) and be smaller.
        mask_refiner_hidden_size: width of the new mask refiner (default: the current width; 0: none). The refiner
            always starts again as the identity.

    Returns:
        the new model (same class, same dtype, device and train / eval mode).

    Raises:
        ValueError: ``patch_size`` is not a smaller divisor of the current patch side, or ``model`` has no SAM
            encoder.
    """
    sam_config = getattr(getattr(model, "config", None), "sam_config", None)
    if sam_config is None or not hasattr(model, "vision_encoder"):
        raise ValueError(f"refine_sam_grid needs a SegCompass model with a SAM image encoder, got "
                         f"{type(model).__name__}.")
    vision = sam_config.vision_config
    old = vision.patch_size
    factor = refinement_factor(old, patch_size)
    config = copy.deepcopy(model.config)
    new_vision, prompt = config.sam_config.vision_config, config.sam_config.prompt_encoder_config
    new_vision.patch_size = patch_size
    new_vision.window_size = vision.window_size * factor  # 0 (global attention everywhere) stays 0
    prompt.patch_size = patch_size
    prompt.image_embedding_size = vision.image_size // patch_size
    if mask_refiner_hidden_size is not None:
        config.mask_refiner_hidden_size = mask_refiner_hidden_size
    refined = type(model)(config)
    target = refined.state_dict()
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("mask_refiner."):
            continue  # its input width depends on the pixel block per mask cell: it starts again
        if name == _ENCODER + "patch_embed.projection.weight":
            channels, inputs = tensor.shape[:2]
            blocks = (channels, inputs, patch_size, factor, patch_size, factor)
            tensor = tensor.reshape(blocks).sum((3, 5))  # (C, 3, q, q)
        elif name == _ENCODER + "pos_embed":
            grid = vision.image_size // patch_size
            tensor = F.interpolate(tensor.permute(0, 3, 1, 2), size=(grid, grid), mode="bicubic",
                                   align_corners=False).permute(0, 2, 3, 1)  # (1, h', h', C)
        elif name.startswith(_ENCODER) and name.endswith(("attn.rel_pos_h", "attn.rel_pos_w")):
            tensor = resample_relative_positions(tensor, factor, target[name].shape[0])  # (2n' - 1, d)
        state[name] = tensor
    missing, unexpected = refined.load_state_dict(state, strict=False)
    left_out = [name for name in missing if not name.startswith("mask_refiner.")]
    if left_out or unexpected:  # the SAM encoder's layout changed under us: fail loudly
        raise RuntimeError(f"refine_sam_grid could not carry every weight over (missing {left_out}, unexpected "
                           f"{unexpected}); the transformers SAM encoder layout it expects has changed.")
    parameter = next(model.parameters())
    refined.to(device=parameter.device, dtype=parameter.dtype).train(model.training)
    logger.info("SAM patches %d -> %d px: image embedding grid %d -> %d, mask grid %d -> %d%s", old, patch_size,
                model.config.image_embedding_size, config.image_embedding_size, model.config.mask_size,
                config.mask_size, "; the mask refiner starts again as the identity"
                if config.mask_refiner_hidden_size else "")
    return refined
