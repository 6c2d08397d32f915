"""The answer format (segcompass.answer_format): build, parse, append slots, score the format."""

import pytest
import torch

from segcompass.answer_format import (
    DEFAULT_REF_TOKEN,
    append_slot_ids,
    append_slots_to_text,
    extract_reasoning,
    format_score,
    reference_completion,
    slot_token_strings,
)

REF, SLOTS, PAD, EOS = 9, [10, 11, 12], 0, 8


def test_build_then_parse_round_trips():
    completion = reference_completion("the red mug is left")
    assert completion == "<think>the red mug is left</think><REF_POS>"
    assert extract_reasoning(completion) == "the red mug is left"
    assert format_score(completion) == 1.0
    assert extract_reasoning("prompt says <think> </think> ... " + completion) == "the red mug is left"  # last block
    assert extract_reasoning("<think> unclosed") == "" and extract_reasoning("no block") == ""
    with pytest.raises(ValueError, match=r"'s7' has no reasoning.*pass `x`"):
        reference_completion("  ", sample_id="s7", fix="pass `x`")


def test_slot_tokens_and_text_append():
    assert slot_token_strings(3) == ["<SLOT_0>", "<SLOT_1>", "<SLOT_2>"]
    with pytest.raises(ValueError, match="exactly once"):
        slot_token_strings(2, "<SLOT>")
    with pytest.raises(ValueError, match="positive int"):
        slot_token_strings(0)
    slots = slot_token_strings(2)
    assert append_slots_to_text("<think>a</think><REF_POS>", DEFAULT_REF_TOKEN, slots) == (
        "<think>a</think><REF_POS><SLOT_0><SLOT_1>", False)
    assert append_slots_to_text("<think>a</think>", DEFAULT_REF_TOKEN, slots) == (
        "<think>a</think><REF_POS><SLOT_0><SLOT_1>", True)


@pytest.mark.parametrize(("text", "score"), [
    ("<think>a</think><REF_POS>", 1.0),
    ("<think>a</think> <REF_POS> <|im_end|>", 1.0),  # trailing end-of-sequence markers do not count
    ("Sure. <think>a</think><REF_POS>", 0.9),
    ("<think>a</think><REF_POS> more", 0.9),
    ("<think>a</think>", 0.0),
    ("<think> </think><REF_POS>", 0.0),
    ("<REF_POS><think>a</think>", 0.0),
    ("<think>a</think><REF_POS><REF_POS>", 0.0),
])
def test_format_score(text, score):
    assert format_score(text) == score


def test_append_slot_ids_cuts_pads_and_flags():
    prompts = torch.tensor([[PAD, 1, 2], [3, 4, 5]])  # left-padded
    prompt_mask = (prompts != PAD).long()
    answers = torch.tensor([[6, REF, 7, EOS], [6, EOS, 7, PAD]])  # row 0: text after <REF_POS>; row 1: no <REF_POS>
    types = torch.tensor([[0, 1, 1], [1, 1, 0]])
    out = append_slot_ids(prompts, prompt_mask, answers, ref_token_id=REF, slot_token_ids=SLOTS, pad_token_id=PAD,
                          stop_token_ids=[EOS], mm_token_type_ids=types)
    assert out.input_ids.tolist() == [[PAD, 1, 2, 6, REF, *SLOTS], [3, 4, 5, 6, REF, *SLOTS]]
    assert out.attention_mask.tolist() == [[0, 1, 1, 1, 1, 1, 1, 1], [1] * 8]
    assert out.malformed.tolist() == [False, True]
    assert [c.tolist() for c in out.completion_ids] == [[6, REF], [6, REF]]
    assert out.slot_positions.tolist() == [[5, 6, 7], [5, 6, 7]]
    assert out.mm_token_type_ids.tolist() == [[0, 1, 1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]]
    sampled_slot = append_slot_ids(prompts[:1], prompt_mask[:1], torch.tensor([[SLOTS[0], 6, REF]]), ref_token_id=REF,
                                   slot_token_ids=SLOTS, pad_token_id=PAD)
    assert sampled_slot.completion_ids[0].tolist() == [6, REF]  # slot tokens are never part of an answer


def test_append_slot_ids_rejects_bad_shapes():
    prompts = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match="batch size"):
        append_slot_ids(prompts, torch.ones(1, 2), torch.ones(2, 3, dtype=torch.long), ref_token_id=REF,
                        slot_token_ids=SLOTS, pad_token_id=PAD)
    with pytest.raises(ValueError, match="no valid token"):
        append_slot_ids(prompts, torch.zeros(1, 2), torch.ones(1, 3, dtype=torch.long), ref_token_id=REF,
                        slot_token_ids=SLOTS, pad_token_id=PAD)
    with pytest.raises(ValueError, match="must match"):
        append_slot_ids(prompts, torch.ones(1, 2), torch.ones(1, 3, dtype=torch.long), ref_token_id=REF,
                        slot_token_ids=SLOTS, pad_token_id=PAD, mm_token_type_ids=torch.zeros(1, 3))


def test_unknown_words_lists_the_words_read_as_unknown():
    from segcompass.answer_format import unknown_words
    from segcompass.from_scratch import build_word_tokenizer

    tokenizer = build_word_tokenizer(["the", "red", "circle"])
    assert unknown_words(tokenizer, "the zorblax red zorblax qux circle") == ["zorblax", "qux"]
    assert unknown_words(tokenizer, "the red circle") == [] and unknown_words(tokenizer, "   ") == []

    class ByteLevel:  # no unknown token: every word is readable
        unk_token_id = None

    assert unknown_words(ByteLevel(), "anything at all") == []


def test_answer_end_is_the_one_cut_rule():
    from segcompass.answer_format import answer_end

    ref, eos, pad = 9, 2, 0
    assert answer_end([5, 6, ref, eos, 7], ref, {eos, pad}) == (3, True)  # through the first <REF_POS>
    assert answer_end([5, ref, 6, ref], ref, {eos, pad}) == (2, True)
    assert answer_end([5, 6, eos, ref], ref, {eos, pad}) == (4, True)  # <REF_POS> wins over an earlier stop token
    assert answer_end([5, 6, eos, 7], ref, {eos, pad}) == (2, False)  # malformed: up to the first stop token
    assert answer_end([5, 6, 7], ref, {eos, pad}) == (3, False)  # truncated: all of it
