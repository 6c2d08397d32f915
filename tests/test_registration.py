"""``import segcompass`` is light and still registers the SegCompass classes with transformers, whatever the
import order (each case runs in a fresh interpreter)."""

import subprocess
import sys
import textwrap

import pytest

from segcompass.presets import default_model_path

CASES = {
    "package import is light": """
        import sys, segcompass
        assert not {"torch", "transformers", "trl"} & set(sys.modules), sorted({"torch", "transformers", "trl"} & set(sys.modules))
        assert segcompass.__version__ and "SegCompassGRPOTrainer" in dir(segcompass)
    """,
    "segcompass first, then transformers": """
        import segcompass
        from transformers import AutoConfig, AutoModel, AutoProcessor, pipeline
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
        assert "segcompass" in CONFIG_MAPPING and "segcompass_sae" in CONFIG_MAPPING
        pipe = pipeline("reasoning-segmentation", model=MODEL)
        assert type(pipe).__name__ == "ReasoningSegmentationPipeline"
        assert type(AutoProcessor.from_pretrained(MODEL)).__name__ == "SegCompassProcessor"
    """,
    "transformers first, then segcompass": """
        import transformers
        import segcompass
        from transformers import AutoModel
        assert type(AutoModel.from_pretrained(MODEL)).__name__ == "SegCompassForReasoningSegmentation"
    """,
    "a submodule that imports transformers half-way": """
        import segcompass.sae
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
        assert "segcompass" in CONFIG_MAPPING and "segcompass_sae" in CONFIG_MAPPING
    """,
    "public names are lazy, trl only on demand": """
        import sys
        from segcompass import SegCompassForReasoningSegmentation, load_segmentation_dataset
        assert "trl" not in sys.modules
        from segcompass import SegCompassGRPOConfig, SegCompassGRPOTrainer  # both build on TRL's classes
        assert "trl" in sys.modules and SegCompassGRPOTrainer.__name__ == "SegCompassGRPOTrainer"
        assert len(load_segmentation_dataset("synthetic", None, "test", num_samples=2, image_size=64)) == 2
    """,
}


@pytest.mark.skipif(default_model_path() is None, reason="no shipped default model")
@pytest.mark.parametrize("case", sorted(CASES))
def test_registration(case):
    code = f"MODEL = {default_model_path()!r}\n" + textwrap.dedent(CASES[case])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_unknown_attribute_is_an_attribute_error():
    import segcompass

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        segcompass.nope  # noqa: B018
