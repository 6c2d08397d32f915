"""The mask path: K-slot heatmap logits + SAM image embeddings -> K mask logits (paper §3.1 "Segmentation Decoder").

Built from transformers' own SAM modules (DESIGN decision 5), composed, not copied:

- ``SamMaskEmbedding`` (the prompt encoder's mask-downscaling convs, SAM's ``mask_downscaling``): the paper's
  "three stacked 2D convolutional blocks" that resample the heatmap from the ``4h x 4w`` grid to the ``h x w``
  embedding grid (Conv 2x2/2 -> LN -> GELU -> Conv 2x2/2 -> LN -> GELU -> Conv 1x1);
- ``SamPositionalEmbedding`` (the prompt encoder's shared random-Fourier positional embedding) for the dense
  image positional embedding (SAM's ``get_dense_pe``);
- ``SamMaskDecoder`` with its two-way transformer, run with no sparse prompt and ``multimask_output=False``.

The heatmap logits enter exactly like SAM's low-resolution mask-logit prompt (``prompt_encoder(masks=...)``) with
no points or boxes, as in the authors' code (official-implementation §1.8), but all ``B * K`` slots go through one
decoder call instead of a per-sample Python loop.

Shape glossary: ``B`` images, ``K`` slots, ``C`` embedding channels (= mask-decoder hidden size, 256 for SAM),
``h x w`` the image-embedding grid (64 x 64 for SAM at 1024 px), ``4h x 4w`` the heatmap / mask grid (256 x 256).

Image-embedding contract: ``transformers.SamVisionModel(sam_config.vision_config)(pixel_values).last_hidden_state``
(or ``SamModel.get_image_embeddings``) is ``(B, C, h, w)`` with ``C = vision_config.output_channels``, which must
equal ``mask_decoder_config.hidden_size`` and ``prompt_encoder_config.hidden_size`` (checked by
[`HeatmapMaskDecoder`]; [`build_sam_image_encoder`] builds that encoder from the same config).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from transformers import SamConfig, SamVisionModel
from transformers.models.sam.modeling_sam import SamMaskDecoder, SamMaskEmbedding, SamPositionalEmbedding

from ..convert.sam import sam_state_dict_for_mask_path
from ..utils.logging import get_logger

logger = get_logger(__name__)

# Logit written into the heatmap outside the valid (unpadded) region before mask downscaling, as in the authors'
# code (official-implementation §1.8): sigmoid(-50) ~ 2e-22, i.e. "certainly background" for SAM's mask prompt.
PADDING_LOGIT = -50.0


def build_sam_image_encoder(config: SamConfig) -> SamVisionModel:
    """The SAM image encoder for the same ``config`` as [`HeatmapMaskDecoder`].

    ``build_sam_image_encoder(config)(pixel_values).last_hidden_state`` is ``(B, C, h, w)`` with
    ``C = config.vision_config.output_channels`` and ``h = w = image_size // patch_size``: exactly the
    ``image_embeddings`` that [`HeatmapMaskDecoder.forward`] takes. Equivalent to
    ``SamVisionModel(config.vision_config)``.
    """
    _check_embedding_contract(config)
    return SamVisionModel(config.vision_config)


def _check_embedding_contract(config: SamConfig) -> None:
    """Raise ValueError unless image embeddings, prompt embeddings and the decoder share one channel width."""
    if not isinstance(config, SamConfig):
        raise ValueError(
            f"Expected a transformers `SamConfig`, got {type(config).__name__}. Build one with "
            "`SamConfig(vision_config=..., prompt_encoder_config=..., mask_decoder_config=...)`."
        )
    decoder_width = config.mask_decoder_config.hidden_size
    widths = {
        "vision_config.output_channels": config.vision_config.output_channels,
        "prompt_encoder_config.hidden_size": config.prompt_encoder_config.hidden_size,
        "2 * vision_config.num_pos_feats": 2 * config.vision_config.num_pos_feats,
    }
    for name, width in widths.items():
        if width != decoder_width:
            raise ValueError(
                f"SamConfig is inconsistent: {name} = {width} but mask_decoder_config.hidden_size = "
                f"{decoder_width}. Image embeddings, the dense prompt and the positional embedding must all have "
                f"the decoder's width; set {name} to {decoder_width}."
            )
    mask_input_channels = config.prompt_encoder_config.mask_input_channels
    if mask_input_channels % 4 != 0 or mask_input_channels < 8:
        raise ValueError(
            f"prompt_encoder_config.mask_input_channels must be a multiple of 4 and at least 8, got "
            f"{mask_input_channels}. SAM's first downscaling conv has mask_input_channels // 4 channels followed by "
            "a channel LayerNorm; with a single channel that LayerNorm outputs a constant and the heatmap has no "
            "effect on the masks. SAM uses 16."
        )


class HeatmapMaskDecoder(nn.Module):
    """SAM-style mask decoder that takes K-slot heatmap logits as dense mask prompts, batched over ``B * K``.

    Submodules (all from ``transformers.models.sam.modeling_sam``):

    - ``mask_embed`` (`SamMaskEmbedding`): heatmap ``(B*K, 1, 4h, 4w)`` -> dense prompt ``(B*K, C, h, w)``;
    - ``shared_embedding`` (`SamPositionalEmbedding`): random Fourier features for the dense positional embedding.
      Its ``positional_embedding`` is a fixed random matrix in SAM (a buffer there), so it is frozen here
      (``requires_grad=False``);
    - ``mask_decoder`` (`SamMaskDecoder`): the two-way transformer, upscaling and hypernetwork MLPs, IoU head.

    The prompt encoder's point/box embeddings and ``no_mask_embed`` are never used on this path, so they are not
    built (no parameters without gradients under DDP). Load SAM weights with [`load_sam_state_dict`].

    Args:
        config (`transformers.SamConfig`): uses ``prompt_encoder_config`` (mask-downscaling widths),
            ``vision_config.num_pos_feats`` / ``scale`` (positional embedding) and ``mask_decoder_config``. If
            ``mask_decoder_config._attn_implementation`` is unset it is set (in place, as ``SamModel`` does) to
            ``config._attn_implementation`` or ``"sdpa"``.
    """

    padding_logit = PADDING_LOGIT

    def __init__(self, config: SamConfig):
        super().__init__()
        _check_embedding_contract(config)
        self.config = config
        self.hidden_size = config.mask_decoder_config.hidden_size
        if config.mask_decoder_config._attn_implementation is None:
            config.mask_decoder_config._attn_implementation = config._attn_implementation or "sdpa"

        self.mask_embed = SamMaskEmbedding(config.prompt_encoder_config)
        self.shared_embedding = SamPositionalEmbedding(config.vision_config)
        self.shared_embedding.positional_embedding.requires_grad_(False)
        self.mask_decoder = SamMaskDecoder(config.mask_decoder_config)

    def load_sam_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True):
        """Load the mask-path weights from a whole SAM state dict.

        Args:
            state_dict: transformers ``SamModel`` names (``load_sam_checkpoint(path)[0]``, ``SamModel.state_dict()``)
                or original segment-anything names; see [`segcompass.convert.sam.sam_state_dict_for_mask_path`].
            strict (`bool`): passed to ``load_state_dict``.

        Returns:
            ``NamedTuple`` with ``missing_keys`` and ``unexpected_keys`` (as ``nn.Module.load_state_dict``).
        """
        return self.load_state_dict(sam_state_dict_for_mask_path(state_dict), strict=strict)

    def get_dense_positional_embeddings(self, height: int, width: int) -> torch.Tensor:
        """SAM's dense positional embedding of an ``height x width`` grid (``PromptEncoder.get_dense_pe``).

        Returns:
            `torch.Tensor` of shape `(1, C, height, width)`.
        """
        weight = self.shared_embedding.positional_embedding
        grid = torch.ones((height, width), device=weight.device, dtype=weight.dtype)
        y_embed = (grid.cumsum(dim=0) - 0.5) / height  # cell centres in [0, 1], (h, w)
        x_embed = (grid.cumsum(dim=1) - 0.5) / width
        coordinates = torch.stack([x_embed, y_embed], dim=-1)  # (h, w, 2)
        positional_embeddings = self.shared_embedding(coordinates)  # (h, w, C)
        return positional_embeddings.permute(2, 0, 1).unsqueeze(0)  # (1, C, h, w)

    def fill_outside_valid(self, heatmap_logits: torch.Tensor, valid_sizes: torch.Tensor | Sequence) -> torch.Tensor:
        """Return a copy of ``heatmap_logits`` with every cell outside each image's valid region set to ``-50``.

        Args:
            heatmap_logits (`torch.Tensor` of shape `(B, K, H, W)`).
            valid_sizes (`torch.Tensor` or nested sequence of shape `(B, 2)`): valid ``(height, width)`` per image
                in cells of the ``H x W`` grid (top-left aligned); sizes >= the grid mean "all valid". Values are
                not range-checked (that would need a host sync).

        Returns:
            `torch.Tensor` of shape `(B, K, H, W)`; gradients flow to the cells inside the valid region only.
        """
        batch_size, _, height, width = heatmap_logits.shape
        sizes = torch.as_tensor(valid_sizes, device=heatmap_logits.device)
        if sizes.shape != (batch_size, 2):
            raise ValueError(
                f"`valid_sizes` must have shape (B, 2) = ({batch_size}, 2) of (height, width) in the "
                f"{height}x{width} heatmap grid, got {tuple(sizes.shape)}."
            )
        rows = torch.arange(height, device=sizes.device)[None, :] < sizes[:, 0:1]  # (B, H)
        cols = torch.arange(width, device=sizes.device)[None, :] < sizes[:, 1:2]  # (B, W)
        valid = (rows[:, :, None] & cols[:, None, :])[:, None]  # (B, 1, H, W)
        padding = heatmap_logits.new_tensor(self.padding_logit)
        return torch.where(valid, heatmap_logits, padding)  # (B, K, H, W)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        heatmap_logits: torch.Tensor,
        *,
        valid_sizes: torch.Tensor | Sequence | None = None,
        image_positional_embeddings: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode one mask per slot from the slot heatmaps, all ``B * K`` slots in one decoder call.

        Args:
            image_embeddings (`torch.Tensor` of shape `(B, C, h, w)`): SAM image embeddings
                (``SamVisionModel(...).last_hidden_state``).
            heatmap_logits (`torch.Tensor` of shape `(B, K, 4h, 4w)`): per-slot heatmap logits, fed as SAM's dense
                mask prompt (not sigmoid-ed).
            valid_sizes (`torch.Tensor` or nested sequence of shape `(B, 2)`, *optional*): ``(height, width)`` of the
                unpadded image region in the ``4h x 4w`` grid (see [`segcompass.sam_frame.valid_mask_sizes`]). Outside it
                the heatmap is set to ``PADDING_LOGIT`` (-50) before downscaling; the caller's tensor is not
                modified.
            image_positional_embeddings (`torch.Tensor` of shape `(1 or B, C, h, w)`, *optional*): defaults to
                [`get_dense_positional_embeddings`] of the ``h x w`` grid.

        Inputs are cast to the decoder's parameter dtype (precomputed embeddings are often stored in fp16).

        Returns:
            `tuple(torch.Tensor)`: ``mask_logits`` of shape `(B, K, 4h, 4w)` (the first mask token, SAM's
            ``multimask_output=False``) and ``iou_scores`` of shape `(B, K)` (that token's predicted IoU).
        """
        if image_embeddings.ndim != 4 or image_embeddings.shape[1] != self.hidden_size:
            raise ValueError(
                f"`image_embeddings` must have shape (B, {self.hidden_size}, h, w), got "
                f"{tuple(image_embeddings.shape)}. Pass SamVisionModel(config.vision_config)(pixel_values)"
                ".last_hidden_state for the same SamConfig."
            )
        batch_size, channels, height, width = image_embeddings.shape
        if heatmap_logits.ndim != 4 or heatmap_logits.shape[0] != batch_size:
            raise ValueError(
                f"`heatmap_logits` must have shape (B, K, 4h, 4w) = ({batch_size}, K, {4 * height}, {4 * width}), "
                f"got {tuple(heatmap_logits.shape)}."
            )
        num_slots = heatmap_logits.shape[1]
        if num_slots < 1 or heatmap_logits.shape[-2:] != (4 * height, 4 * width):
            raise ValueError(
                f"`heatmap_logits` must have shape (B, K>=1, 4h, 4w) = ({batch_size}, K, {4 * height}, {4 * width}) "
                f"for image embeddings of grid {height}x{width}, got {tuple(heatmap_logits.shape)}. Resize the "
                "heatmaps to 4x the embedding grid (SAM: 256x256 for 64x64 embeddings)."
            )

        dtype = self.mask_decoder.iou_token.weight.dtype
        heatmap_logits = heatmap_logits.to(dtype)
        image_embeddings = image_embeddings.to(dtype)
        if valid_sizes is not None:
            heatmap_logits = self.fill_outside_valid(heatmap_logits, valid_sizes)  # (B, K, 4h, 4w)

        mask_prompts = heatmap_logits.reshape(batch_size * num_slots, 1, 4 * height, 4 * width)  # (B*K, 1, 4h, 4w)
        dense_embeddings = self.mask_embed(mask_prompts)  # (B*K, C, h, w)
        slot_image_embeddings = image_embeddings.repeat_interleave(num_slots, dim=0)  # (B*K, C, h, w)

        if image_positional_embeddings is None:
            image_positional_embeddings = self.get_dense_positional_embeddings(height, width)  # (1, C, h, w)
        elif image_positional_embeddings.shape not in ((1, channels, height, width), image_embeddings.shape):
            raise ValueError(
                f"`image_positional_embeddings` must have shape (1 or {batch_size}, {channels}, {height}, {width}), "
                f"got {tuple(image_positional_embeddings.shape)}."
            )
        image_positional_embeddings = image_positional_embeddings.to(dtype)
        if image_positional_embeddings.shape[0] > 1:
            image_positional_embeddings = image_positional_embeddings.repeat_interleave(num_slots, 0)  # (B*K, C, h, w)

        # No sparse prompt: the decoder's tokens are just [iou_token, mask_tokens] per slot; point batch = 1.
        mask_logits, iou_scores = self.mask_decoder(
            image_embeddings=slot_image_embeddings,
            image_positional_embeddings=image_positional_embeddings,
            sparse_prompt_embeddings=None,
            dense_prompt_embeddings=dense_embeddings,
            multimask_output=False,
        )  # (B*K, 1, 1, 4h, 4w), (B*K, 1, 1)
        mask_logits = mask_logits.reshape(batch_size, num_slots, 4 * height, 4 * width)  # (B, K, 4h, 4w)
        iou_scores = iou_scores.reshape(batch_size, num_slots)  # (B, K)
        return mask_logits, iou_scores


__all__ = ["PADDING_LOGIT", "HeatmapMaskDecoder", "build_sam_image_encoder"]
