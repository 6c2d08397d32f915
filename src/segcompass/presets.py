"""Named SegCompass configurations (configs only; no weights are implied or downloaded).

SAM vision configs set ``initializer_range=0.02``: transformers' default (1e-10) is meant only for loading
pretrained weights and makes a randomly built encoder output ~1e-21.

Numbers are the public architectures' published sizes: Qwen2.5-VL-7B (28 layers, hidden 3584; SAE on
hidden_states[13]), LLaVA-1.5-7B/13B (CLIP ViT-L/14-336 + Llama 32/40 layers, hidden 4096/5120; SAE on
hidden_states[16]), SAM ViT-H image encoder (paper appendix A.2), d_sae = 65 536.
"""

from __future__ import annotations

from pathlib import Path

SAM_VIT_H = dict(
    vision_config=dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                       global_attn_indexes=[7, 15, 23, 31], mlp_dim=5120, output_channels=256,
                       initializer_range=0.02),
)


CONCEPT_PATH = dict(concept_selection="centered", concept_value_embedding="log", slot_mapper_positional_keys=True)
"""The concept-path options every preset uses (``SegCompassConfig``'s class defaults are the paper's literal form,
whose activation values and selection carry no signal: DESIGN decision 3)."""


def _qwen25_vl_7b() -> dict:
    backbone = dict(
        model_type="qwen2_5_vl",
        text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                          "mrope_section": [16, 24, 24]}),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           window_size=112, fullatt_block_indexes=[7, 15, 23, 31]),
    )
    return dict(backbone_config=backbone, sae_config=dict(d_in=3584, d_sae=65536, hook_layer=13),
                sam_config=SAM_VIT_H, **CONCEPT_PATH)


def _llava(hidden: int, layers: int, heads: int, intermediate: int) -> dict:
    backbone = dict(
        model_type="llava",
        vision_config=dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                           num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14,
                           projection_dim=768),
        text_config=dict(model_type="llama", vocab_size=32064, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=4096),
        image_token_index=32000, vision_feature_layer=-2, vision_feature_select_strategy="default",
        image_seq_length=576,
    )
    return dict(backbone_config=backbone, sae_config=dict(d_in=hidden, d_sae=65536, hook_layer=16),
                sam_config=SAM_VIT_H, **CONCEPT_PATH)


def _tiny() -> dict:
    """A tiny random Qwen2.5-VL-architecture model; token ids are placeholders the tiny builders overwrite."""
    backbone = dict(
        model_type="qwen2_5_vl",
        text_config=dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
                         bos_token_id=None, eos_token_id=2, pad_token_id=0),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           window_size=56, fullatt_block_indexes=[1]),
        image_token_id=5, video_token_id=6, vision_start_token_id=7, vision_end_token_id=8,
    )
    sam = dict(
        vision_config=dict(hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=8, window_size=4, global_attn_indexes=[1], num_pos_feats=16,
                           mlp_dim=64, initializer_range=0.02),
        prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=8, mask_input_channels=8),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2,
                                 iou_head_hidden_dim=32),
    )
    return dict(backbone_config=backbone, sae_config=dict(d_in=64, d_sae=256, hook_layer=1), sam_config=sam,
                num_slots=3, max_concepts=32, codebook_dim=32, concept_encoder_layers=1, concept_encoder_heads=2,
                concept_encoder_ffn_dim=64, slot_mapper_heads=2, slot_mapper_head_dim=16, **CONCEPT_PATH)


def _tiny_llava() -> dict:
    """A tiny random LLaVA-architecture model (CLIP 32 px / patch 8 -> 16 image tokens, Qwen2 text)."""
    config = _tiny()
    config["backbone_config"] = dict(
        model_type="llava",
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8, projection_dim=32),
        text_config=dict(model_type="qwen2", vocab_size=128, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, eos_token_id=2, pad_token_id=0, bos_token_id=None),
        image_token_index=5, vision_feature_layer=-1, vision_feature_select_strategy="default", image_seq_length=16,
    )
    return config


PRESETS = {
    "qwen2.5-vl-7b": _qwen25_vl_7b,
    "llava-1.5-7b": lambda: _llava(4096, 32, 32, 11008),
    "llava-1.5-13b": lambda: _llava(5120, 40, 40, 13824),
    "tiny": _tiny,
    "tiny-llava": _tiny_llava,
}


DEFAULT_MODEL_NAME = "segcompass-tiny-synthetic"
"""The name of the checkpoint embedded in the package (trained by ``segcompass train-tiny``)."""


def default_model_dir() -> Path:
    """Where the embedded ``segcompass-tiny-synthetic`` checkpoint lives inside the installed package (it may be
    absent in a slimmed install: see :func:`default_model_path`)."""
    return Path(__file__).resolve().parent / "assets" / "default_model"


def default_model_path() -> str | None:
    """The embedded default checkpoint's directory, or ``None`` if this installation ships none. The one way the
    pipeline, the CLI, the demo, the evaluation runner and the recipe find the embedded model."""
    path = default_model_dir()
    return str(path) if (path / "config.json").is_file() else None
