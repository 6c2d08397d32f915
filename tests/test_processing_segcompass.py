"""SegCompassProcessor and image loading, offline with tiny word-level tokenizers and small image processors."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from segcompass.image_utils import SUPPORTED_MODES, load_image
from segcompass.processing_segcompass import (
    DEFAULT_PROMPT_TEMPLATE,
    ImageOnlyQwen2_5_VLProcessor,
    SegCompassProcessor,
    add_special_tokens_to_tokenizer,
    extract_reasoning,
)
from segcompass.testing_processor import (
    build_llava_style_tokenizer,
    build_qwen_style_tokenizer,
    tiny_sam_image_processor,
    tiny_segcompass_processor,
)

K = 3
COMPLETIONS = ["<think> the red circle is left </think><REF_POS>", "<think> it is the mug </think>"]


@pytest.fixture
def qwen():
    return tiny_segcompass_processor("qwen2_5_vl", num_slots=K)


@pytest.fixture
def llava():
    return tiny_segcompass_processor("llava", num_slots=K)


def images():
    """Two images of different sizes and aspect ratios: (H, W) = (40, 80) and (60, 30)."""
    return [Image.new("RGB", (80, 40), (200, 10, 10)), Image.new("RGB", (30, 60), (10, 200, 10))]


def valid_ids(inputs, row):
    return inputs["input_ids"][row][inputs["attention_mask"][row].bool()].tolist()


# ------------------------------------------------------------------------------------------------------------------
# Special tokens
# ------------------------------------------------------------------------------------------------------------------


def test_special_tokens_added_once_with_stable_ids(qwen, tmp_path):
    tokenizer = build_qwen_style_tokenizer()
    size = len(tokenizer)
    assert add_special_tokens_to_tokenizer(tokenizer, num_slots=K) == K + 1
    assert add_special_tokens_to_tokenizer(tokenizer, num_slots=K) == 0  # idempotent
    assert SegCompassProcessor.add_special_tokens_to_tokenizer(tokenizer, num_slots=K) == 0  # class alias
    ids = tokenizer.convert_tokens_to_ids(["<REF_POS>", "<SLOT_0>", "<SLOT_1>", "<SLOT_2>"])
    assert ids == list(range(size, size + K + 1))
    assert qwen.ref_token_id == ids[0] and qwen.slot_token_ids == ids[1:]
    # A larger K later only appends the new slot tokens; existing ids never move.
    assert add_special_tokens_to_tokenizer(tokenizer, num_slots=K + 2) == 2
    assert tokenizer.convert_tokens_to_ids(["<REF_POS>", "<SLOT_0>"]) == ids[:2]
    # Never split from neighbouring text.
    assert tokenizer("</think><REF_POS><SLOT_0>", add_special_tokens=False)["input_ids"][-2:] == ids[:2]

    qwen.save_pretrained(tmp_path)
    loaded = SegCompassProcessor.from_pretrained(tmp_path)
    assert loaded.ref_token_id == qwen.ref_token_id and loaded.slot_token_ids == qwen.slot_token_ids


def test_existing_vocabulary_word_is_registered_without_new_id():
    tokenizer = build_qwen_style_tokenizer(words=["<REF_POS>"])
    word_id = tokenizer.get_vocab()["<REF_POS>"]
    size = len(tokenizer)
    assert add_special_tokens_to_tokenizer(tokenizer, num_slots=1) == 1  # only <SLOT_0> is new
    assert len(tokenizer) == size + 1
    assert tokenizer("a<REF_POS>a", add_special_tokens=False)["input_ids"][1] == word_id


def test_missing_special_tokens_raise_with_the_fix():
    with pytest.raises(ValueError, match=r"'<REF_POS>'.*add_special_tokens_to_tokenizer.*resize_token_embeddings"):
        SegCompassProcessor(
            image_processor=tiny_segcompass_processor().image_processor,
            tokenizer=build_qwen_style_tokenizer(),
            sam_image_processor=tiny_sam_image_processor(),
        )
    tokenizer = build_qwen_style_tokenizer()
    add_special_tokens_to_tokenizer(tokenizer, num_slots=2)
    with pytest.raises(ValueError, match="'<SLOT_2>'"):
        image_processor = tiny_segcompass_processor().image_processor
        SegCompassProcessor(image_processor, tokenizer, tiny_sam_image_processor(), num_slots=3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"backbone_type": "llama"}, "backbone_type"),
        ({"prompt_template": "no placeholder"}, r"\{instruction\}"),
        ({"backbone_kwargs": {"patch_size": 14}}, "Unknown backbone_kwargs"),
        ({"num_slots": 0}, "num_slots"),
        ({"max_length": 0}, "max_length"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_segcompass_processor(**{"num_slots": K, **kwargs})


def test_sam_processor_must_pad():
    processor = tiny_segcompass_processor()
    sam = tiny_sam_image_processor()
    sam.do_pad = False
    with pytest.raises(ValueError, match="pad"):
        SegCompassProcessor(processor.image_processor, processor.tokenizer, sam, num_slots=K)


# ------------------------------------------------------------------------------------------------------------------
# Prompt
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["qwen2_5_vl", "llava"])
def test_prompt_has_instruction_and_one_format_request(backbone):
    processor = tiny_segcompass_processor(backbone, num_slots=K)
    prompt = processor.render_prompt("  the mug left of the plate ")
    assert prompt.count("the mug left of the plate") == 1
    assert prompt.count("<REF_POS>") == 1 and prompt.count("exactly one") == 1
    assert prompt.count("<think>") == 1
    assert prompt.count(processor.image_token) == 1
    assert prompt.index(processor.image_token) < prompt.index("the mug")  # image first, then text
    assert prompt.rstrip().endswith("assistant" if backbone == "qwen2_5_vl" else "ASSISTANT:")
    assert not processor.render_prompt("a mug", add_generation_prompt=False).rstrip().endswith("assistant")
    assert processor.prompt_template == DEFAULT_PROMPT_TEMPLATE  # same template for both backbones


def test_system_prompt_is_optional():
    assert "system" not in tiny_segcompass_processor(num_slots=K).render_prompt("a mug")
    prompt = tiny_segcompass_processor(num_slots=K, system_prompt="you are a helpful").render_prompt("a mug")
    assert prompt.startswith("<|im_start|> system you are a helpful")


def test_template_without_image_placeholder_is_refused(qwen):
    qwen.chat_template = "{% for m in messages %}{{ m['content'][-1]['text'] }}{% endfor %}"
    with pytest.raises(ValueError, match="image placeholders"):
        qwen(images()[0], "a mug")


# ------------------------------------------------------------------------------------------------------------------
# __call__
# ------------------------------------------------------------------------------------------------------------------


def test_qwen_outputs_keys_shapes_and_image_token_expansion(qwen):
    inputs = qwen(images(), ["the red circle", "a mug"])
    assert set(inputs) == {
        "input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw",
        "sam_pixel_values", "original_sizes", "reshaped_input_sizes",
    }  # fmt: skip
    batch, length = inputs["input_ids"].shape
    assert batch == 2 and inputs["attention_mask"].shape == inputs["mm_token_type_ids"].shape == (2, length)
    grid = inputs["image_grid_thw"]
    assert grid.tolist() == [[1, 4, 6], [1, 6, 4]]
    assert inputs["pixel_values"].shape == (int(grid.prod(dim=1).sum()), 3 * 2 * 14 * 14)
    image_pad = qwen.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for row in range(2):
        expected = int(grid[row].prod()) // 4
        assert (inputs["input_ids"][row] == image_pad).sum() == expected
        assert torch.equal(inputs["mm_token_type_ids"][row] == 1, inputs["input_ids"][row] == image_pad)
    assert inputs["sam_pixel_values"].shape == (2, 3, 64, 64)
    assert inputs["original_sizes"].tolist() == [[40, 80], [60, 30]]
    assert inputs["reshaped_input_sizes"].tolist() == [[32, 64], [64, 32]]
    # Left padding (generation): the shorter row starts with padding.
    assert qwen.tokenizer.padding_side == "left"
    assert inputs["attention_mask"][:, -1].all() and not inputs["attention_mask"][1, 0]


def test_llava_outputs_and_image_sequence_length(llava):
    inputs = llava(images(), ["the red circle", "a mug"])
    assert set(inputs) == {
        "input_ids", "attention_mask", "pixel_values", "sam_pixel_values", "original_sizes", "reshaped_input_sizes",
    }  # fmt: skip
    assert inputs["pixel_values"].shape == (2, 3, 32, 32)
    image_seq_length = (32 // 8) ** 2  # patch 8, CLS dropped by the "default" feature strategy
    image_id = llava.tokenizer.convert_tokens_to_ids("<image>")
    assert ((inputs["input_ids"] == image_id).sum(dim=1) == image_seq_length).all()
    assert inputs["sam_pixel_values"].shape == (2, 3, 64, 64)


def test_numpy_return_tensors(qwen):
    inputs = qwen(images(), ["the red circle", "a mug"], return_tensors="np")
    assert isinstance(inputs["input_ids"], np.ndarray) and inputs["sam_pixel_values"].shape == (2, 3, 64, 64)


def test_completions_are_appended_after_the_generation_prompt(qwen):
    prompts = qwen(images(), ["the red circle", "a mug"])
    full = qwen(images(), ["the red circle", "a mug"], completions=COMPLETIONS)
    for row, completion in enumerate(COMPLETIONS):
        prompt_ids, full_ids = valid_ids(prompts, row), valid_ids(full, row)
        assert full_ids[: len(prompt_ids)] == prompt_ids
        completion_ids = qwen.tokenizer(completion, add_special_tokens=False)["input_ids"]
        assert full_ids[len(prompt_ids) :] == completion_ids
    assert torch.equal(full["pixel_values"], prompts["pixel_values"])


def generated_layout(processor, instructions, answers):
    """Left-padded prompts followed by right-padded answer tokens: the layout of ``generate`` / TRL."""
    prompts = processor(images(), instructions)
    tokens = processor.tokenizer(answers, add_special_tokens=False, padding=True, padding_side="right",
                                 return_tensors="pt")
    ids = torch.cat([prompts["input_ids"], tokens["input_ids"]], dim=1)
    mask = torch.cat([prompts["attention_mask"], tokens["attention_mask"]], dim=1)
    types = torch.cat([prompts["mm_token_type_ids"], torch.zeros_like(tokens["input_ids"])], dim=1)
    return prompts, ids, mask, types


def test_append_slots_in_call_matches_token_level_append(qwen):
    """The text-level append (``append_slots=True``) and the one token-level append give the same sequences."""
    instructions = ["the red circle", "a mug"]
    slotted = qwen(images(), instructions, completions=COMPLETIONS, append_slots=True)
    assert slotted["missing_ref_pos"].tolist() == [False, True]
    prompts, ids, mask, types = generated_layout(qwen, instructions, COMPLETIONS)
    appended = qwen.append_slot_tokens(ids, mask, prompt_length=prompts["input_ids"].shape[1], mm_token_type_ids=types)
    assert torch.equal(appended.input_ids, slotted["input_ids"])
    assert torch.equal(appended.attention_mask, slotted["attention_mask"])
    assert torch.equal(appended.mm_token_type_ids, slotted["mm_token_type_ids"])
    assert torch.equal(appended.malformed, slotted["missing_ref_pos"])
    assert torch.equal(appended.slot_positions, qwen.find_slot_positions(slotted["input_ids"]))
    for row in range(2):  # ... <REF_POS> <SLOT_0> ... <SLOT_K-1> at the end of every row
        assert valid_ids(slotted, row)[-(K + 1) :] == [qwen.ref_token_id, *qwen.slot_token_ids]


# ------------------------------------------------------------------------------------------------------------------
# append_slot_tokens on token ids (segcompass.answer_format.append_slot_ids)
# ------------------------------------------------------------------------------------------------------------------


def test_append_slot_tokens_after_generate_layout(qwen):
    """Left-padded prompt + right-padded answers with end-of-sequence tokens: each answer is cut after its first
    <REF_POS> (or at its end-of-sequence token, and <REF_POS> is added), the slots follow, rows are left-padded."""
    tokens = qwen.tokenizer.convert_tokens_to_ids
    eos = qwen.tokenizer.eos_token
    answers = [f"<think> red </think><REF_POS>{eos} left", f"<think> it </think>{eos} left {eos}"]
    prompts, ids, mask, _ = generated_layout(qwen, ["the red circle", "a mug"], answers)
    prompt_length = prompts["input_ids"].shape[1]
    out = qwen.append_slot_tokens(ids, mask, prompt_length=prompt_length)
    assert out.malformed.tolist() == [False, True]
    kept = [[tokens("<think>"), tokens("red"), tokens("</think>"), qwen.ref_token_id],
            [tokens("<think>"), tokens("it"), tokens("</think>"), qwen.ref_token_id]]
    for row in range(2):
        expected = valid_ids(prompts, row) + kept[row] + qwen.slot_token_ids
        assert out.input_ids[row][out.attention_mask[row].bool()].tolist() == expected
        assert out.completion_ids[row].tolist() == kept[row]
        assert torch.equal(out.input_ids[row, out.slot_positions[row]], torch.tensor(qwen.slot_token_ids))
    assert out.attention_mask[:, -1].all()  # left-padded: every row ends with its last slot
    assert out.input_ids.shape[1] == max(len(valid_ids(prompts, r)) + 4 + K for r in range(2))
    # The attention mask defaults to input_ids != pad.
    assert torch.equal(qwen.append_slot_tokens(ids, prompt_length=prompt_length).input_ids, out.input_ids)


def test_append_slot_tokens_refuses_bad_input(qwen):
    slotted = qwen(images(), ["a", "b"], completions=COMPLETIONS, append_slots=True)
    length = slotted["input_ids"].shape[1]
    with pytest.raises(ValueError, match="already contain slot tokens"):
        qwen.append_slot_tokens(slotted["input_ids"], slotted["attention_mask"], prompt_length=length - 1)
    ids = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"Prompt rows \[1\] have no valid token"):
        qwen.append_slot_tokens(ids, torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]]), prompt_length=2)
    with pytest.raises(ValueError, match="shape"):
        qwen.append_slot_tokens(ids, torch.ones(2, 3), prompt_length=2)
    with pytest.raises(ValueError, match="prompt_length must be in"):
        qwen.append_slot_tokens(ids)


def test_extract_reasoning_and_batch_decode(qwen):
    assert extract_reasoning("<think> red is left </think><REF_POS>") == "red is left"
    assert extract_reasoning("no block <REF_POS>") == "" and extract_reasoning("<think> unclosed") == ""
    assert qwen.extract_reasoning("x <think> </think> y <think>\na\nb\n</think> <think> unclosed") == "a\nb"
    inputs = qwen(images()[0], "a mug", completions="<think> red </think><REF_POS>")
    text = qwen.batch_decode(inputs["input_ids"], skip_special_tokens=False)[0]
    assert text.endswith("<think> red </think> <REF_POS>") and qwen.extract_reasoning(text) == "red"


# ------------------------------------------------------------------------------------------------------------------
# Masks
# ------------------------------------------------------------------------------------------------------------------


def test_post_process_masks_maps_the_valid_region_back(qwen):
    inputs = qwen(images(), ["a", "b"])  # (40, 80) -> SAM (32, 64) in a 64 x 64 frame; (60, 30) -> (64, 32)
    m = 16  # one mask cell = 4 px of the SAM frame
    assert qwen.valid_mask_sizes(inputs["reshaped_input_sizes"], m).tolist() == [[8, 16], [16, 8]]
    assert qwen.valid_mask_sizes([[33, 64]], (16, 16)).tolist() == [[9, 16]]  # ceil
    logits = torch.full((2, K, m, m), -10.0)
    logits[0, 1, 2:6, 4:12] = 10.0  # SAM rows 8..24, cols 16..48 -> original rows 10..30, cols 20..60
    logits[1, 0, 8:16, 0:8] = 10.0  # bottom half of the valid (16, 8) region -> rows 30..60, all columns
    masks = qwen.post_process_masks(logits, inputs["original_sizes"], inputs["reshaped_input_sizes"])
    assert [tuple(mask.shape) for mask in masks] == [(K, 40, 80), (K, 60, 30)] and masks[0].dtype == torch.bool
    def iou(a, b):
        return float((a & b).sum() / (a | b).sum())

    expected = torch.zeros(40, 80, dtype=torch.bool)
    expected[10:30, 20:60] = True
    found = masks[0][1].nonzero()
    assert found.min(dim=0).values.tolist() == [10, 20] and found.max(dim=0).values.tolist() == [29, 59]
    assert iou(masks[0][1], expected) > 0.98 and not masks[0][0].any()  # bilinear rounds the 4 corners only
    expected = torch.zeros(60, 30, dtype=torch.bool)
    expected[30:, :] = True
    assert iou(masks[1][0], expected) > 0.95
    sizes = (inputs["original_sizes"], inputs["reshaped_input_sizes"])
    soft = qwen.post_process_masks(list(logits), *sizes, binarize=False)
    assert soft[0].dtype == torch.float32 and torch.equal(soft[0][1] > 0, masks[0][1])
    with pytest.raises(ValueError, match="one of each per sample"):
        qwen.post_process_masks(logits, inputs["original_sizes"][:1], inputs["reshaped_input_sizes"][:1])


# ------------------------------------------------------------------------------------------------------------------
# Save / load
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["qwen2_5_vl", "llava"])
def test_save_load_round_trip_gives_identical_outputs(backbone, tmp_path):
    processor = tiny_segcompass_processor(
        backbone, num_slots=K, system_prompt="you are a helpful", max_length=12, prompt_template="Find: {instruction}"
    )
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["processor_class"] == "SegCompassProcessor" and config["num_slots"] == K
    assert config["sam_image_processor"]["pad_size"] == {"height": 64, "width": 64}

    loaded = SegCompassProcessor.from_pretrained(tmp_path, local_files_only=True)
    for name in ("backbone_type", "num_slots", "prompt_template", "system_prompt", "max_length", "backbone_kwargs"):
        assert getattr(loaded, name) == getattr(processor, name), name
    assert type(loaded.image_processor) is type(processor.image_processor)
    assert type(loaded.sam_image_processor).__name__ == "SamImageProcessorPil"
    assert loaded.tokenizer.padding_side == "left"
    a = processor(images(), ["the red circle", "a mug"], completions=COMPLETIONS, append_slots=True)
    b = loaded(images(), ["the red circle", "a mug"], completions=COMPLETIONS, append_slots=True)
    assert set(a) == set(b) and all(torch.equal(a[key], b[key]) for key in a)
    assert "SegCompassProcessor" in repr(loaded)


def test_from_backbone_pretrained_adds_tokens(tmp_path):
    """A stock-style Qwen2.5-VL directory (no SegCompass tokens) becomes a SegCompass processor."""
    tiny = tiny_segcompass_processor()
    tokenizer = build_qwen_style_tokenizer()
    stock = ImageOnlyQwen2_5_VLProcessor(tiny.image_processor, tokenizer, chat_template=tokenizer.chat_template)
    stock.save_pretrained(tmp_path)
    processor = SegCompassProcessor.from_backbone_pretrained(
        tmp_path, "qwen2_5_vl", num_slots=K, sam_image_processor=tiny_sam_image_processor()
    )
    assert len(processor.tokenizer) == len(tokenizer) + K + 1
    assert processor(images()[0], "a mug")["input_ids"].shape[0] == 1


def test_apply_chat_template_path_matches_call(qwen):
    """ProcessorMixin.apply_chat_template (used by TRL) renders the same prompt and returns the same inputs."""
    conversations = [qwen.build_messages(text, image=image) for text, image in zip(["a", "b"], images())]
    via_template = qwen.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True, processor_kwargs={"padding": True}
    )
    direct = qwen(images(), ["a", "b"])
    assert set(via_template) == set(direct) and all(torch.equal(via_template[k], direct[k]) for k in direct)


# ------------------------------------------------------------------------------------------------------------------
# Input validation
# ------------------------------------------------------------------------------------------------------------------


def test_one_image_is_broadcast_and_counts_must_match(qwen):
    image = images()[0]
    inputs = qwen(image, ["a", "b", "c"])
    assert inputs["input_ids"].shape[0] == 3 and inputs["sam_pixel_values"].shape[0] == 3
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 6]] * 3
    with pytest.raises(ValueError, match="Got 2 images for 3 instructions"):
        qwen(images(), ["a", "b", "c"])
    with pytest.raises(ValueError, match="Got 2 images for 1 instructions"):
        qwen(images(), "a")
    with pytest.raises(ValueError, match="Got 1 completions for 2 samples"):
        qwen(images(), ["a", "b"], completions=["<REF_POS>"])
    with pytest.raises(ValueError, match="needs `images`"):
        qwen(None, "a")


@pytest.mark.parametrize("instruction", ["", "   \n"])
def test_empty_instruction(qwen, instruction):
    with pytest.raises(ValueError, match="Instruction 1 is empty"):
        qwen(images(), ["a mug", instruction])


def test_too_long_instruction():
    processor = tiny_segcompass_processor(num_slots=K, max_length=4)
    processor(images()[0], "the red circle left")  # 4 tokens: fine
    with pytest.raises(ValueError, match="Instruction 0 is 5 tokens long, more than the limit of 4"):
        processor(images()[0], "the red circle on left")
    processor = tiny_segcompass_processor(num_slots=K)
    processor.tokenizer.model_max_length = 2  # used when max_length is None
    with pytest.raises(ValueError, match="limit of 2 tokens"):
        processor(images()[0], "the red circle")


def test_reserved_tokens_in_inputs(qwen):
    with pytest.raises(ValueError, match="reserved token '<REF_POS>'"):
        qwen(images()[0], "find <REF_POS>")
    with pytest.raises(ValueError, match=r"reserved token '<\|image_pad\|>'"):
        qwen(images()[0], "a <|image_pad|>")
    with pytest.raises(ValueError, match="reserved token '<SLOT_0>'"):
        qwen(images()[0], "a", completions="<think> a </think><REF_POS><SLOT_0>")


# ------------------------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------------------------


def mode_images():
    palette = Image.new("P", (6, 4))
    palette.putpalette([255, 0, 0] * 256)
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    sixteen = Image.fromarray(np.full((4, 6), 65535, dtype=np.uint16))
    return {
        "L": (Image.new("L", (6, 4), 128), (128, 128, 128)),
        "LA": (Image.new("LA", (6, 4), (0, 0)), (255, 255, 255)),  # fully transparent -> white
        "RGBA": (Image.new("RGBA", (6, 4), (255, 0, 0, 255)), (255, 0, 0)),
        "RGBA-transparent": (Image.new("RGBA", (6, 4), (0, 0, 0, 0)), (255, 255, 255)),
        "P": (palette, (255, 0, 0)),
        "P-transparency": (transparent, (255, 255, 255)),
        "I;16": (sixteen, (255, 255, 255)),
        "CMYK": (Image.new("CMYK", (6, 4), (0, 255, 0, 0)), (255, 0, 255)),
        "1": (Image.new("1", (6, 4), 1), (255, 255, 255)),
        "array-gray": (np.full((4, 6), 7, dtype=np.uint8), (7, 7, 7)),
        "array-float": (np.ones((4, 6, 3), dtype=np.float32), (255, 255, 255)),
        "array-rgba": (np.zeros((4, 6, 4), dtype=np.uint8), (255, 255, 255)),
        "array-1ch": (np.full((4, 6, 1), 9, dtype=np.uint8), (9, 9, 9)),
        "tensor": (torch.full((4, 6, 3), 3, dtype=torch.uint8), (3, 3, 3)),
    }


@pytest.mark.parametrize("name", list(mode_images()))
def test_image_modes_become_rgb(name):
    image, pixel = mode_images()[name]
    rgb = load_image(image)
    assert rgb.mode == "RGB" and rgb.size == (6, 4) and rgb.getpixel((0, 0)) == pixel


def test_processor_accepts_non_rgb_images(qwen, tmp_path):
    path = tmp_path / "gray.png"
    Image.new("I;16", (50, 30)).save(path)
    inputs = qwen([str(path), Image.new("RGBA", (30, 50))], ["a", "b"])
    assert inputs["original_sizes"].tolist() == [[30, 50], [50, 30]]


@pytest.mark.parametrize("mode", ["F", "I", "HSV"])
def test_unsupported_mode_names_mode_and_fix(mode, qwen):
    assert mode not in SUPPORTED_MODES
    with pytest.raises(ValueError, match=rf"PIL mode '{mode}'.*Convert it first"):
        load_image(Image.new(mode, (4, 4)))
    with pytest.raises(ValueError, match=rf"PIL mode '{mode}'"):
        qwen(Image.new(mode, (40, 40)), "a")


@pytest.mark.parametrize(
    "array, match",
    [
        (np.zeros((3, 8, 8), dtype=np.uint8), "channels-first"),
        (np.full((4, 4), 2.0), r"\[0, 1\]"),
        (np.zeros((4, 4), dtype=np.int32), "dtype int32"),
        (np.full((4, 4), np.nan), "NaN"),
        (np.zeros((4, 4, 2), dtype=np.uint8), "shape"),
    ],
)
def test_bad_arrays(array, match):
    with pytest.raises(ValueError, match=match):
        load_image(array)


def test_zero_size_images():
    with pytest.raises(ValueError, match="empty .*0x5"):
        load_image(Image.new("RGB", (0, 5)))
    with pytest.raises(ValueError, match="empty"):
        load_image(np.zeros((0, 4, 3), dtype=np.uint8))


def test_corrupt_truncated_and_missing_files(tmp_path, qwen):
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good)
    data = good.read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "corrupt.png").write_bytes(b"not an image at all")
    assert load_image(good).getpixel((0, 0)) == (1, 2, 3) and load_image(os.fspath(good)).size == (64, 64)
    with pytest.raises(ValueError, match="truncated.png' is truncated.*check the file") as error:
        load_image(tmp_path / "truncated.png")
    assert error.value.__cause__ is None and error.value.__suppress_context__  # no PIL traceback chained
    with pytest.raises(ValueError, match="corrupt.png' cannot be decoded.*re-save"):
        qwen(str(tmp_path / "corrupt.png"), "a")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="URLs are not fetched"):
        load_image("https://example.com/cat.png")
    with pytest.raises(TypeError, match="Expected a PIL image"):
        load_image(42)


def test_exif_orientation_is_opt_in(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    Image.new("RGB", (40, 20)).save(path, exif=exif.tobytes())
    assert load_image(path).size == (40, 20)
    assert load_image(path, exif_transpose=True).size == (20, 40)
