"""Tiny random models, configs and inputs for tests (the project's and users' own); library code never imports this
module. The real builders it uses live in :mod:`segcompass.from_scratch`.

Everything here is built offline in about a second on CPU; nothing is downloaded.
"""

from __future__ import annotations

from .from_scratch import (  # noqa: F401  (re-exported for users' tests)
    BASE_SPECIAL_TOKENS,
    DEFAULT_WORDS,
    IM_END,
    IM_START,
    PAD_TOKEN,
    SIMPLE_CHAT_TEMPLATE,
    UNK_TOKEN,
    build_word_tokenizer,
)
from .from_scratch import config_for_processor as tiny_config_for_processor  # noqa: F401
from .sae import SparseAutoencoderConfig


def tiny_causal_lm(tokenizer=None, hidden_size: int = 32, num_layers: int = 2, seed: int = 0):
    """A tiny random Qwen2 causal LM matched to ``tokenizer`` (default: :func:`build_word_tokenizer`)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = tokenizer or build_word_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config), tokenizer


def tiny_sae_config(**overrides) -> SparseAutoencoderConfig:
    """A small SAE config (d_in 32, d_sae 128, ReLU, hook layer 1)."""
    kwargs = dict(d_in=32, d_sae=128, activation="relu", hook_layer=1, l1_coefficient=1.0)
    kwargs.update(overrides)
    return SparseAutoencoderConfig(**kwargs)


def tiny_sam_config(mask_input_channels: int = 16):
    """A tiny transformers ``SamConfig`` (64 px input, patch 8 -> 8 x 8 embedding grid, width 32, 2 + 2 layers).

    ``layer_norm_eps=1e-5`` in the mask decoder: the original ``TwoWayTransformer`` uses ``nn.LayerNorm``'s default,
    so parity tests against ``segment_anything`` compare like with like.
    """
    from transformers import SamConfig

    hidden = 32
    return SamConfig(
        vision_config=dict(
            hidden_size=hidden, output_channels=hidden, num_hidden_layers=2, num_attention_heads=2, image_size=64,
            patch_size=8, window_size=4, global_attn_indexes=[1], num_pos_feats=hidden // 2, mlp_dim=2 * hidden,
        ),
        prompt_encoder_config=dict(hidden_size=hidden, image_size=64, patch_size=8,
                                   mask_input_channels=mask_input_channels),
        mask_decoder_config=dict(
            hidden_size=hidden, mlp_dim=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
            iou_head_hidden_dim=hidden, layer_norm_eps=1e-5,
        ),
    )


def segment_anything_modeling():
    """``segment_anything.modeling`` (the original SAM, for parity tests), or ``None`` when it is not installed.

    Imported without running the package ``__init__``, which imports torchvision (never installed here: it breaks
    transformers' Qwen2.5-VL on this torch).
    """
    import importlib
    import importlib.util
    import sys
    import types

    spec = importlib.util.find_spec("segment_anything")
    if spec is None:
        return None
    if "segment_anything" not in sys.modules:
        package = types.ModuleType("segment_anything")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["segment_anything"] = package
    return importlib.import_module("segment_anything.modeling")


def tiny_grpo_config(output_dir, **overrides):
    """A ``SegCompassGRPOConfig`` for a few CPU steps on a tiny model: batch 4, 2 generations of at most 8 tokens,
    2 steps, lr 1e-4, no saving, no reporting, fp32, seed 0; ``overrides`` replace any field. Needs ``trl``."""
    from .training.grpo_config import SegCompassGRPOConfig

    kwargs = dict(
        output_dir=str(output_dir), per_device_train_batch_size=4, num_generations=2, max_completion_length=8,
        max_steps=2, use_cpu=True, report_to="none", save_strategy="no", bf16=False, activation_checkpointing=False,
        learning_rate=1e-4, dataset_check_rows=None, seed=0,
    )
    kwargs.update(overrides)
    return SegCompassGRPOConfig(**kwargs)


# Placeholder special-token ids of `tiny_segcompass_config` (within the tiny preset's 128-token vocabulary).
TINY_REF_TOKEN_ID = 100


def tiny_segcompass_config(num_slots: int = 3, **overrides):
    """The ``tiny`` SegCompass preset with placeholder special-token ids (``<REF_POS>`` = 100, slots 101…)."""
    from .configuration_segcompass import SegCompassConfig

    kwargs = dict(num_slots=num_slots, ref_token_id=TINY_REF_TOKEN_ID,
                  slot_token_ids=list(range(TINY_REF_TOKEN_ID + 1, TINY_REF_TOKEN_ID + 1 + num_slots)))
    kwargs.update(overrides)
    return SegCompassConfig.from_preset("tiny", **kwargs)


def tiny_text_inputs(config, lengths, seed: int = 0):
    """Left-padded text-only inputs ending ``<REF_POS>`` + the slot tokens: (B, T) ``input_ids`` and mask."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    suffix = torch.tensor([config.ref_token_id, *config.slot_token_ids])
    rows = [torch.cat([torch.randint(10, 90, (n,), generator=generator), suffix]) for n in lengths]
    width = max(len(r) for r in rows)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for b, row in enumerate(rows):
        input_ids[b, width - len(row):] = row
        attention_mask[b, width - len(row):] = 1
    return input_ids, attention_mask


def make_tiny_checkpoint(directory, backbone_type: str = "qwen2_5_vl", num_slots: int = 3, seed: int = 0,
                         **config_overrides):
    """Write a complete tiny random SegCompass checkpoint into ``directory`` and return ``(model, processor)``:
    :func:`segcompass.from_scratch.save_random_checkpoint`."""
    from .from_scratch import save_random_checkpoint

    return save_random_checkpoint(directory, backbone_type, num_slots, seed, **config_overrides)


def tiny_backbone_image_inputs(processor, seed: int = 0) -> dict:
    """Backbone inputs (ids, mask, ``pixel_values``, ``image_grid_thw``, ...) for two random images of different
    sizes with short instructions, from a SegCompass ``processor``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 255, (40, 56, 3), dtype=np.uint8), rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)]
    enc = processor(images=images, instructions=["the red circle", "every blue square"], return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
            if k in enc}
