"""The tiny model and processor, random, with a recipe configuration's sizes."""

from __future__ import annotations

import torch

from .config import THINK_TOKENS, TinyRecipeConfig, check_backbone_image_side


def build_tiny_tokenizer(num_slots: int):
    """Word-level tokenizer for the synthetic domain (Qwen-style chat template and vision specials)."""
    from ...data.synthetic import VOCABULARY
    from ...from_scratch import build_qwen_style_tokenizer
    from ...processing_segcompass import add_special_tokens_to_tokenizer

    tokenizer = build_qwen_style_tokenizer(words=VOCABULARY)
    tokenizer.add_tokens(list(THINK_TOKENS))  # split "<think>the" into two tokens
    add_special_tokens_to_tokenizer(tokenizer, num_slots)
    return tokenizer


def build_tiny_model_and_processor(config: TinyRecipeConfig, seed: int = 0):
    """A random SegCompass model + processor with the sizes of ``config``. Returns ``(model, processor)``."""
    from transformers import Qwen2VLImageProcessorPil, SamImageProcessorPil

    from ...from_scratch import config_for_processor
    from ...modeling_segcompass import SegCompassForReasoningSegmentation
    from ...processing_segcompass import SegCompassProcessor

    tokenizer = build_tiny_tokenizer(config.num_slots)
    pixels = config.backbone_image_side**2
    processor = SegCompassProcessor(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=pixels, max_pixels=pixels, patch_size=14, merge_size=2),
        tokenizer=tokenizer,
        sam_image_processor=SamImageProcessorPil(
            size={"longest_edge": config.image_size},
            pad_size={"height": config.image_size, "width": config.image_size},
        ),
        num_slots=config.num_slots,
    )
    hidden, heads = config.text_hidden_size, config.text_heads
    half_head = hidden // heads // 2
    mrope = [half_head - 2 * (3 * half_head // 8), 3 * half_head // 8, 3 * half_head // 8]
    sam_hidden, grid = config.sam_hidden_size, config.image_size // config.sam_patch_size
    overrides = dict(
        backbone_config=dict(
            model_type="qwen2_5_vl",
            text_config=dict(
                vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=config.text_intermediate_size,
                num_hidden_layers=config.text_layers, num_attention_heads=heads,
                num_key_value_heads=config.text_kv_heads, max_position_embeddings=1024,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
                bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                tie_word_embeddings=True,
            ),
            vision_config=dict(
                depth=config.vision_depth, hidden_size=config.vision_hidden_size,
                intermediate_size=2 * config.vision_hidden_size, num_heads=2, out_hidden_size=hidden,
                window_size=config.backbone_image_side, fullatt_block_indexes=[config.vision_depth - 1],
            ),
        ),
        sae_config=dict(d_in=hidden, d_sae=config.sae_expansion * hidden, hook_layer=config.hook_layer,
                        activation="relu"),
        sam_config=dict(
            vision_config=dict(
                hidden_size=sam_hidden, output_channels=sam_hidden, num_hidden_layers=config.sam_layers,
                num_attention_heads=2, image_size=config.image_size, patch_size=config.sam_patch_size,
                window_size=max(2, grid // 2), global_attn_indexes=[config.sam_layers - 1],
                num_pos_feats=sam_hidden // 2, mlp_dim=config.sam_mlp_dim, initializer_range=0.02,
            ),
            prompt_encoder_config=dict(hidden_size=sam_hidden, image_size=config.image_size,
                                       patch_size=config.sam_patch_size, mask_input_channels=16),
            mask_decoder_config=dict(hidden_size=sam_hidden, mlp_dim=2 * sam_hidden, num_hidden_layers=2,
                                     num_attention_heads=2, iou_head_hidden_dim=sam_hidden),
        ),
        max_concepts=config.max_concepts, codebook_dim=config.codebook_dim, concept_encoder_layers=config.concept_layers,
        concept_encoder_heads=4, concept_encoder_ffn_dim=2 * config.codebook_dim, slot_mapper_heads=4,
        slot_mapper_head_dim=16, slot_embedding_dropout=config.slot_embedding_dropout,
        concept_window=config.concept_window, mask_refiner_hidden_size=config.mask_refiner_hidden_size,
        mask_confidence_hidden_size=config.mask_confidence_hidden_size,
        image_position_frequencies=config.image_position_frequencies,
    )
    model_config = config_for_processor(processor, **overrides)
    # Generation stops at <REF_POS> (the scoring pass cuts there anyway) or at <|im_end|>; kept in the saved config.
    model_config.backbone_config.get_text_config().eos_token_id = [tokenizer.eos_token_id, processor.ref_token_id]
    torch.manual_seed(seed)
    model = SegCompassForReasoningSegmentation(model_config)
    model.backbone.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor


def set_backbone_image_side(model, processor, side: int) -> None:
    """Show a built or trained tiny model's backbone ``side`` x ``side`` images: the processor's pixel budget and the
    ViT's attention window (the whole image, as :func:`build_tiny_model_and_processor` makes it), in place.

    Qwen2.5-VL's ViT (2-D RoPE) and M-RoPE hold no weight tied to the token grid, so the weights take a new side as
    they are; what the model learned to see at the old side needs training again (the anchored reasoning stage:
    the shipped model, trained at 168 px, names exactly the right targets in 16 % of 320 validation samples when
    shown 252 px images as they are, against 69 % at 168 px)."""
    check_backbone_image_side(side)
    vision_config = getattr(model.config.backbone_config, "vision_config", None)
    if vision_config is None or not hasattr(vision_config, "window_size"):
        raise ValueError("set_backbone_image_side needs a Qwen2.5-VL backbone (its vision config has a window_size); "
                         f"got {type(model.config.backbone_config).__name__}.")
    pixels = side * side
    processor.image_processor.size = {"shortest_edge": pixels, "longest_edge": pixels}  # min / max pixels
    vision_config.window_size = side  # the backbone's and the ViT's config are this object
    model.backbone.model.visual.window_size = side  # the ViT copies it at construction
