"""Original SAM checkpoints (``sam_vit_{b,l,h}_*.pth``) -> transformers ``SamModel`` names and the mask path.

The installed transformers wheel ships no SAM conversion mapping to import (``convert_sam_to_hf.py`` lives only in
the transformers repository, and ``transformers.conversion_mapping`` has no ``sam`` entry), so the key mapping is
written here as a table of regex renames, original (``segment_anything.modeling``) -> transformers
(``transformers.models.sam.modeling_sam``):

=================================================  ======================================================
original                                           transformers ``SamModel``
=================================================  ======================================================
``image_encoder.patch_embed.proj.*``               ``vision_encoder.patch_embed.projection.*``
``image_encoder.pos_embed``                        ``vision_encoder.pos_embed``
``image_encoder.blocks.{i}.norm{1,2}.*``           ``vision_encoder.layers.{i}.layer_norm{1,2}.*``
``image_encoder.blocks.{i}.{attn,mlp}.*``          ``vision_encoder.layers.{i}.{attn,mlp}.*``
``image_encoder.neck.{0,1,2,3}.*``                 ``vision_encoder.neck.{conv1,layer_norm1,conv2,layer_norm2}.*``
``prompt_encoder.pe_layer.positional_encoding``    ``shared_image_embedding.positional_embedding`` and
``_gaussian_matrix``                               ``prompt_encoder.shared_embedding.positional_embedding`` (tied)
``prompt_encoder.point_embeddings.{i}.*``          ``prompt_encoder.point_embed.{i}.*``
``prompt_encoder.mask_downscaling.{0,1,3,4,6}.*``  ``prompt_encoder.mask_embed.{conv1,layer_norm1,conv2,``
                                                   ``layer_norm2,conv3}.*``
``prompt_encoder.{not_a_point,no_mask}_embed.*``   unchanged
``mask_decoder.transformer.layers.{i}.norm{n}.*``  ``mask_decoder.transformer.layers.{i}.layer_norm{n}.*``
``mask_decoder.transformer.norm_final_attn.*``     ``mask_decoder.transformer.layer_norm_final_attn.*``
``mask_decoder.output_upscaling.{0,1,3}.*``        ``mask_decoder.{upscale_conv1,upscale_layer_norm,upscale_conv2}.*``
``mask_decoder.<mlp>.layers.{0, j, last}.*``       ``mask_decoder.<mlp>.{proj_in, layers.{j-1}, proj_out}.*``
                                                   (``<mlp>``: ``output_hypernetworks_mlps.{i}``,
                                                   ``iou_prediction_head``)
other ``mask_decoder.*`` (attention projections,   unchanged
``iou_token``, ``mask_tokens``, ``mlp.lin{1,2}``)
=================================================  ======================================================

Numerics: the original two-way transformer's LayerNorms use PyTorch's default ``eps=1e-5`` while transformers
reads ``mask_decoder_config.layer_norm_eps`` (default ``1e-6``); configs built here set ``1e-5`` so converted
checkpoints reproduce the original outputs.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping

import torch
from transformers import SamConfig

from ..utils.logging import get_logger

logger = get_logger(__name__)

# (vision width, depth) -> name, heads, global-attention block indexes (segment_anything/build_sam.py).
SAM_VARIANTS: dict[tuple[int, int], tuple[str, int, tuple[int, ...]]] = {
    (768, 12): ("vit_b", 12, (2, 5, 8, 11)),
    (1024, 24): ("vit_l", 16, (5, 11, 17, 23)),
    (1280, 32): ("vit_h", 16, (7, 15, 23, 31)),
}
# LayerNorm eps of the original TwoWayTransformer (nn.LayerNorm default).
ORIGINAL_MASK_DECODER_LAYER_NORM_EPS = 1e-5

_POSITIONAL_KEY = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
_TIED_POSITIONAL_KEYS = (
    "shared_image_embedding.positional_embedding",
    "prompt_encoder.shared_embedding.positional_embedding",
)
# Non-persistent buffers of segment_anything's `Sam`; dropped if a checkpoint carries them anyway.
_IGNORED_ORIGINAL_KEYS = ("pixel_mean", "pixel_std")

_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^image_encoder\.patch_embed\.proj\.", "vision_encoder.patch_embed.projection."),
    (r"^image_encoder\.pos_embed$", "vision_encoder.pos_embed"),
    (r"^image_encoder\.blocks\.(\d+)\.norm([12])\.", r"vision_encoder.layers.\1.layer_norm\2."),
    (
        r"^image_encoder\.blocks\.(\d+)\.(attn\.(?:qkv|proj)\.|attn\.rel_pos_[hw]$|mlp\.lin[12]\.)",
        r"vision_encoder.layers.\1.\2",
    ),
    (r"^image_encoder\.neck\.0\.", "vision_encoder.neck.conv1."),
    (r"^image_encoder\.neck\.1\.", "vision_encoder.neck.layer_norm1."),
    (r"^image_encoder\.neck\.2\.", "vision_encoder.neck.conv2."),
    (r"^image_encoder\.neck\.3\.", "vision_encoder.neck.layer_norm2."),
    (r"^prompt_encoder\.point_embeddings\.(\d+)\.", r"prompt_encoder.point_embed.\1."),
    (r"^prompt_encoder\.(not_a_point_embed|no_mask_embed)\.", r"prompt_encoder.\1."),
    (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.norm([1-4])\.", r"mask_decoder.transformer.layers.\1.layer_norm\2."),
    (r"^mask_decoder\.transformer\.norm_final_attn\.", "mask_decoder.transformer.layer_norm_final_attn."),
    (
        r"^mask_decoder\.transformer\.(layers\.\d+\.(?:self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"
        r"|final_attn_token_to_image)\.((?:q|k|v|out)_proj\.)",
        r"mask_decoder.transformer.\1.\2",
    ),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.mlp\.(lin[12])\.", r"mask_decoder.transformer.layers.\1.mlp.\2."),
    (r"^mask_decoder\.(iou_token|mask_tokens)\.", r"mask_decoder.\1."),
    (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
)
# The original `MLP` keeps all linears in `layers`; transformers' `SamFeedForward` has proj_in / layers / proj_out.
_MLP_PATTERN = re.compile(r"^mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.(\d+)\.(.+)$")

# transformers SamModel names -> HeatmapMaskDecoder names.
_MASK_PATH_PREFIXES = (("prompt_encoder.mask_embed.", "mask_embed."), ("mask_decoder.", "mask_decoder."))
_MASK_PATH_POSITIONAL_KEY = "shared_embedding.positional_embedding"
_MASK_PATH_REQUIRED = (
    *(
        f"mask_embed.{name}.{param}"
        for name in ("conv1", "conv2", "conv3", "layer_norm1", "layer_norm2")
        for param in ("weight", "bias")
    ),
    _MASK_PATH_POSITIONAL_KEY,
    "mask_decoder.iou_token.weight",
    "mask_decoder.mask_tokens.weight",
)
# SamModel parts the mask path never uses (point / box / no-mask prompts, the image encoder).
_MASK_PATH_UNUSED = re.compile(r"^(vision_encoder\.|prompt_encoder\.(point_embed|not_a_point_embed|no_mask_embed)\.)")


def convert_sam_state_dict(original_state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original SAM state dict (``segment_anything.modeling.Sam`` names) to transformers ``SamModel`` names.

    Works on whole checkpoints and on parts (e.g. only ``prompt_encoder.*`` + ``mask_decoder.*``, as in the
    authors' ``refseg_modules.pt``). Tensors are not copied.

    Raises:
        ValueError: for keys the table does not know (a SAM derivative such as HQ-SAM or MobileSAM).
    """
    mlp_depths: dict[str, int] = {}
    for key in original_state_dict:
        match = _MLP_PATTERN.match(key)
        if match:
            mlp_depths[match[1]] = max(mlp_depths.get(match[1], 0), int(match[2]) + 1)

    converted: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in original_state_dict.items():
        if key in _IGNORED_ORIGINAL_KEYS:
            continue
        if key == _POSITIONAL_KEY:
            for tied_key in _TIED_POSITIONAL_KEYS:
                converted[tied_key] = value
            continue
        new_key = _convert_key(key, mlp_depths)
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = value
    if unknown:
        raise ValueError(
            f"{len(unknown)} key(s) are not part of the original SAM architecture, e.g. {unknown[:5]}. Only "
            "segment_anything's ImageEncoderViT / PromptEncoder / MaskDecoder checkpoints (sam_vit_{b,l,h}) are "
            "supported; remove extra modules from the state dict first."
        )
    return converted


def _convert_key(key: str, mlp_depths: dict[str, int]) -> str | None:
    """One original key -> its transformers name, or None when the key is unknown."""
    match = _MLP_PATTERN.match(key)
    if match:
        mlp, index, rest = match[1], int(match[2]), match[3]
        if index == 0:
            return f"mask_decoder.{mlp}.proj_in.{rest}"
        if index == mlp_depths[mlp] - 1:
            return f"mask_decoder.{mlp}.proj_out.{rest}"
        return f"mask_decoder.{mlp}.layers.{index - 1}.{rest}"
    for pattern, replacement in _RENAMES:
        new_key, count = re.subn(pattern, replacement, key)
        if count:
            return new_key
    return None


def infer_sam_config(original_state_dict: Mapping[str, torch.Tensor]) -> SamConfig:
    """The transformers ``SamConfig`` of an original ``sam_vit_{b,l,h}`` state dict, from its encoder width/depth.

    Raises:
        ValueError: when width and depth match none of ViT-B/L/H (pass ``config=`` to [`load_sam_checkpoint`]).
    """
    width = original_state_dict["image_encoder.patch_embed.proj.weight"].shape[0]
    block_indexes = {int(k.split(".")[2]) for k in original_state_dict if k.startswith("image_encoder.blocks.")}
    depth = len(block_indexes)
    if (width, depth) not in SAM_VARIANTS:
        known = ", ".join(f"{name} (width {w}, depth {d})" for (w, d), (name, _, _) in SAM_VARIANTS.items())
        raise ValueError(
            f"Cannot infer the SAM variant: the image encoder has width {width} and depth {depth}, which matches "
            f"none of {known}. Pass `config=SamConfig(...)` describing this checkpoint."
        )
    name, num_heads, global_attn_indexes = SAM_VARIANTS[(width, depth)]
    logger.info(f"Inferred SAM variant {name} (image encoder width {width}, depth {depth}).")
    return SamConfig(
        vision_config={
            "hidden_size": width,
            "num_hidden_layers": depth,
            "num_attention_heads": num_heads,
            "global_attn_indexes": list(global_attn_indexes),
        },
        mask_decoder_config={"layer_norm_eps": ORIGINAL_MASK_DECODER_LAYER_NORM_EPS},
    )


def load_sam_checkpoint(
    path: str | os.PathLike, *, config: SamConfig | None = None
) -> tuple[dict[str, torch.Tensor], SamConfig]:
    """Read an original SAM checkpoint (``sam_vit_{b,l,h}_*.pth``) as a transformers ``SamModel`` state dict.

    The file is read with ``torch.load(..., weights_only=True)``: tensors only, no arbitrary unpickling.

    Args:
        path (`str` or `os.PathLike`): the ``.pth`` file written by ``torch.save(sam.state_dict(), path)``.
        config (`transformers.SamConfig`, *optional*): the architecture. Inferred from the image encoder's width
            and depth (ViT-B / L / H) when omitted; required for any other size.

    Returns:
        `tuple`: ``(state_dict, config)`` where ``SamModel(config).load_state_dict(state_dict)`` loads strictly.
        Use [`sam_state_dict_for_mask_path`] to pick the [`HeatmapMaskDecoder`] weights.

    Raises:
        ValueError: the file is missing, is not loadable with ``weights_only=True``, is not a SAM state dict (no
            ``image_encoder.*`` keys), has unknown keys, or does not match ``config``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(
            f"SAM checkpoint {path!r} does not exist. Download an original checkpoint (e.g. sam_vit_h_4b8939.pth "
            "from the segment-anything README) and pass its path."
        )
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{path!r} could not be read with torch.load(weights_only=True) ({first_line}). SegCompass only reads "
            "checkpoints that hold tensors, never arbitrary pickled objects. If you trust this file, re-save its "
            "state dict alone (`torch.save(state_dict, new_path)`) and pass the new path."
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"{path!r} is not a readable torch checkpoint: {error}") from error

    if isinstance(state_dict, Mapping) and "image_encoder.patch_embed.proj.weight" not in state_dict:
        for wrapper in ("model", "state_dict"):
            if isinstance(state_dict.get(wrapper), Mapping):
                logger.info(f"Reading the state dict stored under {wrapper!r} in {path!r}.")
                state_dict = state_dict[wrapper]
                break
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(
            f"{path!r} does not hold a state dict (a mapping of names to tensors); got {type(state_dict).__name__}. "
            "Save original SAM checkpoints with `torch.save(sam.state_dict(), path)`."
        )
    if not any(key.startswith("image_encoder.") for key in state_dict):
        raise ValueError(
            f"{path!r} is not an original SAM checkpoint: it has no `image_encoder.*` keys (first keys: "
            f"{list(state_dict)[:3]}). Pass a segment-anything sam_vit_{{b,l,h}}_*.pth file; for a state dict with "
            "only `prompt_encoder.*` / `mask_decoder.*` keys use `convert_sam_state_dict` and "
            "`sam_state_dict_for_mask_path` directly."
        )

    if config is None:
        config = infer_sam_config(state_dict)
    else:
        width = state_dict["image_encoder.patch_embed.proj.weight"].shape[0]
        depth = len({int(k.split(".")[2]) for k in state_dict if k.startswith("image_encoder.blocks.")})
        vision = config.vision_config
        if (vision.hidden_size, vision.num_hidden_layers) != (width, depth):
            raise ValueError(
                f"`config` describes an image encoder of width {vision.hidden_size} and depth "
                f"{vision.num_hidden_layers}, but {path!r} has width {width} and depth {depth}. Pass the matching "
                "config, or `config=None` to infer ViT-B/L/H."
            )
    return convert_sam_state_dict(state_dict), config


def sam_state_dict_for_mask_path(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pick (and rename) the weights [`HeatmapMaskDecoder`] needs from a SAM state dict.

    Accepts transformers ``SamModel`` names (from [`load_sam_checkpoint`], ``SamModel.state_dict()`` or a hub
    ``facebook/sam-vit-*`` checkpoint) or original segment-anything names (converted first). Keys the mask path
    never uses (image encoder, point / box / no-mask prompt embeddings) are dropped and logged at info level;
    keys that are not SAM's are reported as unexpected (warning) and dropped. Per-layer completeness is then
    checked by ``HeatmapMaskDecoder.load_state_dict(..., strict=True)``.

    Returns:
        `dict`: ``mask_embed.*``, ``shared_embedding.positional_embedding`` and ``mask_decoder.*`` tensors.

    Raises:
        ValueError: when a weight every mask path needs is missing (listed in the message).
    """
    original_prefixes = ("prompt_encoder.mask_downscaling.", "prompt_encoder.pe_layer.", "image_encoder.")
    if any(key.startswith(original_prefixes) for key in state_dict):
        state_dict = convert_sam_state_dict(state_dict)

    selected: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    unexpected: list[str] = []
    for key, value in state_dict.items():
        if key in _TIED_POSITIONAL_KEYS:
            # Prefer the prompt encoder's copy; the two are tied in SamModel.
            if key == _TIED_POSITIONAL_KEYS[1] or _MASK_PATH_POSITIONAL_KEY not in selected:
                selected[_MASK_PATH_POSITIONAL_KEY] = value
            continue
        for prefix, new_prefix in _MASK_PATH_PREFIXES:
            if key.startswith(prefix):
                selected[new_prefix + key[len(prefix) :]] = value
                break
        else:
            (unused if _MASK_PATH_UNUSED.match(key) else unexpected).append(key)

    if unused:
        logger.info(f"Mask path: dropped {len(unused)} SAM weights it never uses (image encoder, point/box prompts).")
    if unexpected:
        logger.warning(f"Mask path: ignored {len(unexpected)} unexpected key(s) that are not SAM's: {unexpected[:5]}.")
    missing = [key for key in _MASK_PATH_REQUIRED if key not in selected]
    if missing:
        raise ValueError(
            f"The SAM state dict lacks {len(missing)} weight(s) the mask path needs: {missing}. Pass a full SAM "
            "state dict (load_sam_checkpoint(...)[0] or SamModel.state_dict()) that includes the prompt encoder "
            "and mask decoder."
        )
    return selected


__all__ = [
    "SAM_VARIANTS",
    "convert_sam_state_dict",
    "infer_sam_config",
    "load_sam_checkpoint",
    "sam_state_dict_for_mask_path",
]
