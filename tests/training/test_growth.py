"""add_identity_decoder_layers: deeper reasoning that starts as the identity and leaves the SAE's input alone."""

import pytest
import torch
from transformers import AutoModel

from segcompass.testing import tiny_backbone_image_inputs
from segcompass.training.growth import add_identity_decoder_layers


@pytest.mark.parametrize("backbone_type", ["qwen2_5_vl", "llava"])
def test_added_layers_start_as_the_identity_and_round_trip(backbone_type, tiny_checkpoint_factory, tmp_path):
    from segcompass import SegCompassProcessor

    directory = tiny_checkpoint_factory(backbone_type)
    model = AutoModel.from_pretrained(directory).eval()
    processor = SegCompassProcessor.from_pretrained(directory)
    inputs = tiny_backbone_image_inputs(processor)
    hook = model.config.sae_config.hook_layer
    layers = model.config.get_text_config().num_hidden_layers
    with torch.no_grad():
        before = model.backbone(**inputs, output_hidden_states=True)
        assert add_identity_decoder_layers(model, 2) == layers + 2
        after = model.backbone(**inputs, output_hidden_states=True)
    assert model.config.get_text_config().num_hidden_layers == layers + 2 == len(after.hidden_states) - 1
    torch.testing.assert_close(after.logits, before.logits)
    torch.testing.assert_close(after.hidden_states[hook], before.hidden_states[hook], rtol=0, atol=0)
    with torch.no_grad():  # the new layers take their own KV-cache slots: generation runs and matches a fresh load
        generated = model.backbone.generate(**inputs, max_new_tokens=3, do_sample=False)
    # trained new layers change the logits but never the SAE's input
    top = model.backbone.model.language_model.layers[-1]
    torch.nn.init.normal_(top.self_attn.o_proj.weight, std=0.5)
    torch.nn.init.normal_(top.mlp.down_proj.weight, std=0.5)
    with torch.no_grad():
        moved = model.backbone(**inputs, output_hidden_states=True)
    assert not torch.allclose(moved.logits, before.logits)
    torch.testing.assert_close(moved.hidden_states[hook], before.hidden_states[hook], rtol=0, atol=0)
    model.save_pretrained(tmp_path)
    reloaded, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert reloaded.config.get_text_config().num_hidden_layers == layers + 2
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval().backbone(**inputs).logits, moved.logits)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_bad_layer_counts_are_refused(bad, tiny_model):
    with pytest.raises(ValueError, match=r"`num_layers` must be an int >= 1 \(decoder layers to add\), got "):
        add_identity_decoder_layers(tiny_model, bad)


def test_added_vision_blocks_start_as_the_identity(tiny_checkpoint, tiny_processor, tmp_path):
    from segcompass.training.growth import add_identity_vision_blocks

    model = AutoModel.from_pretrained(tiny_checkpoint).eval()
    inputs = tiny_backbone_image_inputs(tiny_processor)
    visual = model.backbone.model.visual
    depth, full = visual.config.depth, list(visual.config.fullatt_block_indexes)
    with torch.no_grad():
        before = model.backbone(**inputs).logits
        assert add_identity_vision_blocks(model, 2) == depth + 2 == len(visual.blocks)
        torch.testing.assert_close(model.backbone(**inputs).logits, before)
    top_is_full = depth - 1 in full
    assert visual.fullatt_block_indexes == full + ([depth, depth + 1] if top_is_full else [])
    torch.nn.init.normal_(visual.blocks[-1].mlp.down_proj.weight, std=0.5)
    with torch.no_grad():
        moved = model.backbone(**inputs).logits
    assert not torch.allclose(moved, before)
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert reloaded.config.backbone_config.vision_config.depth == depth + 2
    with torch.no_grad():
        torch.testing.assert_close(reloaded.backbone(**inputs).logits, moved)
    with pytest.raises(ValueError, match=r"`num_blocks` must be an int >= 1 \(vision blocks to add\), got 0"):
        add_identity_vision_blocks(model, 0)
