"""Named SegCompass configurations (configs only; no weights are implied or downloaded).

SAM vision configs set ``initializer_range=0.02``: transformers' default (1e-10) is meant only for loading
pretrained weights and makes a randomly built encoder output ~1e-21.

Numbers are the public architectures' published sizes: Qwen2.5-VL-7B (28 layers, hidden 3584; SAE on
hidden_states[13]), LLaVA-1.5-7B/13B (CLIP ViT-L/14-336 + Llama 32/40 layers, hidden 4096/5120; SAE on
hidden_states[16]), SAM ViT-H image encoder (paper appendix A.2), d_sae = 65 536.
"""

from __future__ import annotations

import os
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


# ------------------------------------------------------------------------------------------------ model names
STOCK_PARTS = {
    "qwen2.5-vl-7b": {"backbone": "Qwen/Qwen2.5-VL-7B-Instruct", "sam": "sam_vit_h_4b8939.pth"},
    "llava-1.5-7b": {"backbone": "llava-hf/llava-1.5-7b-hf", "sam": "sam_vit_h_4b8939.pth"},
    "llava-1.5-13b": {"backbone": "llava-hf/llava-1.5-13b-hf", "sam": "sam_vit_h_4b8939.pth"},
}
"""The public pretrained parts each full-size preset is built from (``segcompass build``)."""

SAM_VIT_H_URL = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"
HUB_TIMEOUT_S = 3.0
"""How long :func:`resolve_checkpoint` waits for the Hub to answer (one request, no retries)."""


def build_command(preset: str, output_dir: str) -> str:
    """The ``segcompass build`` command line that makes a checkpoint of ``preset`` in ``output_dir``."""
    parts = STOCK_PARTS[preset]
    return (f"segcompass build --preset {preset} --backbone {parts['backbone']} --sam {parts['sam']} "
            f"--sae SAE_DIR --output-dir {output_dir}")


def _unpublished(name: str) -> ValueError:
    lower = name.lower()
    preset = ("llava-1.5-13b" if "13b" in lower else "llava-1.5-7b") if "llava" in lower else "qwen2.5-vl-7b"
    return ValueError(
        f"{name!r} is not a published checkpoint: no full-size SegCompass weights are on the Hub (the one shipped "
        f"model is the embedded {DEFAULT_MODEL_NAME!r}). Assemble one from its pretrained parts (the new heads start "
        f"untrained): `{build_command(preset, './' + name)}` (SAM weights: {SAM_VIT_H_URL}; --sae is optional, "
        f"without it the SAE is untrained; add --dry-run to see its size first), then pass ./{name}."
    )


def _offline() -> bool:
    """Hub access is off: huggingface_hub's setting (read at its import) or the variables as they are now."""
    from huggingface_hub import constants

    variables = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return constants.HF_HUB_OFFLINE or any(os.environ.get(v, "").upper() in {"1", "ON", "YES", "TRUE"}
                                           for v in variables)


def _resolve_hub_id(repo_id: str, timeout: float, cache_dir) -> str:
    """``repo_id`` if the Hub answers within ``timeout`` seconds that it exists, else its cached snapshot directory,
    else a ValueError saying what to do."""
    from huggingface_hub import model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, HTTPError, RepositoryNotFoundError

    try:
        cached = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir)
    except HFValidationError as err:
        raise ValueError(f"model {repo_id!r} is neither a local directory nor a valid Hub id ({err}).") from err
    cached_dir = str(Path(cached).parent) if isinstance(cached, str) else None
    if _offline():
        if cached_dir:
            return cached_dir
        raise ValueError(
            f"model {repo_id!r} is not a local directory and not in the local Hugging Face cache, and the Hub is off "
            f"(HF_HUB_OFFLINE): download it where there is a connection (`hf download {repo_id}`) or pass a local "
            "checkpoint directory.")
    try:
        model_info(repo_id, timeout=timeout)  # one request, no retry loop
        return repo_id
    except GatedRepoError:
        return repo_id  # it exists; loading it needs `hf auth login` and accepted terms
    except RepositoryNotFoundError as err:
        if cached_dir:
            return cached_dir
        raise ValueError(f"model {repo_id!r} is not a local directory and the Hub has no such repository (or it is "
                         "private: log in with `hf auth login`); check the name or pass a local checkpoint "
                         "directory.") from err
    except (OSError, HTTPError) as err:  # DNS, refused, timeout, 5xx
        if cached_dir:
            from .utils.logging import get_logger  # transformers: imported only when needed

            get_logger(__name__).warning("The Hub did not answer for %s (%s); using the cached copy %s.", repo_id,
                                         err, cached_dir)
            return cached_dir
        raise ValueError(
            f"model {repo_id!r} is not a local directory and the Hugging Face Hub cannot be reached within "
            f"{timeout:g} s ({type(err).__name__}: {err}); check the connection, or download it where there is one "
            f"(`hf download {repo_id}`) and pass the local directory.") from err


def resolve_checkpoint(name_or_path, *, timeout: float = HUB_TIMEOUT_S, cache_dir=None) -> str:
    """Check a model name before anything heavy is loaded; return what ``from_pretrained`` should be given.

    - a local directory with ``config.json`` -> its absolute path; a local path without one, or one that does not
      exist -> ``ValueError`` saying so;
    - ``segcompass-tiny-synthetic`` -> the embedded checkpoint; any other bare ``segcompass-*`` name (e.g.
      ``segcompass-qwen7b``) -> ``ValueError`` at once with the ``segcompass build`` command that makes one;
    - any other Hub id -> itself if the Hub says it exists within ``timeout`` seconds (one request, no retries),
      else its snapshot in the local HF cache (``cache_dir``, default the HF cache), else ``ValueError``. With
      ``HF_HUB_OFFLINE=1`` only the cache is looked at.
    """
    text = str(name_or_path)
    local = Path(text).expanduser()
    if text and local.exists():
        if not (local / "config.json").is_file():
            raise ValueError(f"model {text!r} has no config.json; pass a directory written by "
                             "model.save_pretrained(...) (with its processor saved next to it).")
        return str(local.resolve())
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep in text.replace("/", "")
    if looks_local or not text:
        raise ValueError(f"model path {text!r} does not exist; pass a checkpoint directory written by "
                         "save_pretrained (segcompass.from_scratch.save_random_checkpoint writes a small random one).")
    if text == DEFAULT_MODEL_NAME:
        path = default_model_path()
        if path is None:
            raise ValueError(f"{DEFAULT_MODEL_NAME!r} is not embedded in this installation; train it with "
                             "`segcompass train-tiny OUTPUT_DIR` and pass OUTPUT_DIR.")
        return path
    if "/" not in text and text.lower().startswith("segcompass-"):
        raise _unpublished(text)
    return _resolve_hub_id(text, timeout, cache_dir)
