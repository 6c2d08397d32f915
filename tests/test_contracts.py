"""Contracts with the libraries whose internals we compose. When one of these fails after an upgrade, the
pinned range in pyproject.toml is too wide: fix the code or narrow the range, do not loosen the test."""

import inspect
from importlib.metadata import version

from packaging.version import Version


def _in_range(name, low, high):
    v = Version(version(name))
    return Version(low) <= v < Version(high), str(v)


def test_transformers_in_pinned_range():
    ok, found = _in_range("transformers", "5.24", "6")
    assert ok, f"transformers {found} outside the pinned range >=5.24,<6"


def test_sam_internals_used_by_the_mask_path():
    from transformers.models.sam import modeling_sam as sam

    for name in ("SamMaskEmbedding", "SamPositionalEmbedding", "SamMaskDecoder", "SamVisionModel"):
        assert hasattr(sam, name), f"transformers.models.sam.modeling_sam.{name} is gone"
    params = inspect.signature(sam.SamMaskDecoder.forward).parameters
    for arg in ("image_embeddings", "image_positional_embeddings", "sparse_prompt_embeddings",
                "dense_prompt_embeddings", "multimask_output"):
        assert arg in params, f"SamMaskDecoder.forward lost `{arg}`"
    embedding = sam.SamMaskEmbedding.__init__
    assert "config" in inspect.signature(embedding).parameters
    from transformers import SamConfig

    config = SamConfig(prompt_encoder_config=dict(mask_input_channels=8))
    module = sam.SamMaskEmbedding(config.prompt_encoder_config)
    for child in ("conv1", "conv2", "conv3", "layer_norm1", "layer_norm2"):
        assert hasattr(module, child), f"SamMaskEmbedding.{child} is gone"
    positional = sam.SamPositionalEmbedding(config.vision_config)
    assert hasattr(positional, "positional_embedding") and hasattr(positional, "scale")


def test_configuration_and_initialization_api():
    from transformers import initialization
    from transformers.configuration_utils import SubConfigSpec  # noqa: F401 (composite config declaration)

    for fn in ("copy_", "zeros_", "constant_", "normal_", "trunc_normal_", "kaiming_uniform_", "uniform_", "ones_"):
        assert hasattr(initialization, fn), f"transformers.initialization.{fn} is gone"
    from transformers.pipelines import PIPELINE_REGISTRY

    assert "pt_model" in inspect.signature(PIPELINE_REGISTRY.register_pipeline).parameters


def test_qwen2_5_vl_processor_accepts_no_video_processor():
    from transformers import Qwen2_5_VLProcessor

    assert "video_processor" in inspect.signature(Qwen2_5_VLProcessor.__init__).parameters
