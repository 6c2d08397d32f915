"""The model's inference plumbing: build_scoring_inputs (the one slot-append with the model's ids) and the SAM frame
taken from reshaped_input_sizes inside forward / segment."""

import torch
from PIL import Image

from segcompass.answer_format import append_slot_ids
from segcompass.sam_frame import masks_to_original_size


def prompts(processor):
    images = [Image.new("RGB", (80, 48), (200, 30, 30)), Image.new("RGB", (30, 60), (30, 200, 30))]
    return processor(images=images, instructions=["the red circle", "every shape"], return_tensors="pt")


def test_build_scoring_inputs_is_the_one_slot_append(tiny_model, tiny_processor):
    model, processor = tiny_model, tiny_processor
    inputs = prompts(processor)
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids
    answers = torch.tensor([[ids("red"), processor.ref_token_id, ids("mug")], [ids("red"), tok.eos_token_id, tok.pad_token_id]])
    scoring = model.build_scoring_inputs(inputs["input_ids"], inputs["attention_mask"], answers, tok.pad_token_id,
                                         [tok.eos_token_id], inputs["mm_token_type_ids"])
    reference = append_slot_ids(inputs["input_ids"], inputs["attention_mask"], answers,
                                ref_token_id=processor.ref_token_id, slot_token_ids=processor.slot_token_ids,
                                pad_token_id=tok.pad_token_id, stop_token_ids=[tok.eos_token_id],
                                mm_token_type_ids=inputs["mm_token_type_ids"])
    assert torch.equal(scoring["input_ids"], reference.input_ids)
    assert torch.equal(scoring["mm_token_type_ids"], reference.mm_token_type_ids)
    assert scoring["malformed"].tolist() == [False, True]
    assert torch.equal(model.slot_positions(scoring["input_ids"]), reference.slot_positions)
    with torch.no_grad():  # the model scores what it built, taking the SAM frame from reshaped_input_sizes itself
        kwargs = dict(input_ids=scoring["input_ids"], attention_mask=scoring["attention_mask"],
                      sam_pixel_values=inputs["sam_pixel_values"], pixel_values=inputs["pixel_values"],
                      image_grid_thw=inputs["image_grid_thw"], mm_token_type_ids=scoring["mm_token_type_ids"])
        by_frame = model(reshaped_input_sizes=inputs["reshaped_input_sizes"], **kwargs)
        by_sizes = model(valid_mask_sizes=model.valid_mask_sizes(inputs["reshaped_input_sizes"]), **kwargs)
        unmasked = model(**kwargs)
    torch.testing.assert_close(by_frame.mask_logits, by_sizes.mask_logits, rtol=0, atol=0)
    assert not torch.equal(by_frame.mask_logits, unmasked.mask_logits)  # the padding really is ignored


def test_segment_masks_are_the_frame_rule_at_the_original_size(tiny_model, tiny_processor):
    model, processor = tiny_model, tiny_processor
    inputs = prompts(processor)
    tok = processor.tokenizer
    result = model.segment(**inputs, max_new_tokens=4, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    for b, (height, width) in enumerate([(48, 80), (60, 30)]):
        expected = masks_to_original_size(result.outputs.mask_logits[b], inputs["reshaped_input_sizes"][b],
                                          (height, width), model.sam_input_size) > 0
        assert result.masks[b].shape == (model.config.num_slots, height, width)
        assert torch.equal(result.masks[b], expected)
