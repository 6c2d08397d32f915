"""One backbone forward per GRPO completion (segcompass.training.grpo_forward): the shared policy + scoring sequence
gives TRL's log-probabilities and the scoring forward's masks, and a training step runs the backbone once with
gradients."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("trl")

from trl.trainer.utils import add_fused_lm_head

import segcompass  # noqa: F401  (registers the Auto classes)
from segcompass.modeling_segcompass import SegCompassForReasoningSegmentation
from segcompass.testing import tiny_grpo_config
from segcompass.training.grpo_data import prepare_grpo_dataset
from segcompass.training.grpo_forward import policy_segmentation_inputs, shared_forward
from segcompass.training.grpo_rollout import right_pad

COMPLETIONS = (
    "<think> red circle </think> <REF_POS>",  # stopped at <REF_POS> (what GRPO samples)
    "<think> blue </think> <REF_POS> <|im_end|>",  # <REF_POS> then the end of sequence
    "<think> green square at top </think> <|im_end|>",  # no <REF_POS>: malformed, cut at the stop token
    "<think> red red red red red red red red",  # truncated at the length limit (the longest row): no stop token
)


def _completion_mask(ids: torch.Tensor, stops: list[int]) -> torch.Tensor:
    """TRL's completion mask: 1 up to and including the first stop token."""
    is_stop = torch.isin(ids, torch.tensor(stops))
    first = torch.where(is_stop.any(1), is_stop.int().argmax(1), ids.shape[1])
    return (torch.arange(ids.shape[1])[None] <= first[:, None]).long()


@pytest.fixture(scope="module")
def rollout(tiny):
    directory, processor, dataset = tiny
    model = SegCompassForReasoningSegmentation.from_pretrained(directory).eval()
    tokenizer = processor.tokenizer
    rows = [dataset[i] for i in range(len(COMPLETIONS))]
    prompts = processor([r["image"] for r in rows], [r["instruction"] for r in rows])
    pad = tokenizer.pad_token_id
    completions = right_pad([tokenizer(c, add_special_tokens=False).input_ids for c in COMPLETIONS], pad)  # (B, C)
    stops = [tokenizer.convert_tokens_to_ids("<|im_end|>"), model.config.ref_token_id]
    return model, processor, prompts, completions, _completion_mask(completions, stops), stops


def _sequence(model, prompts, completions, mask, stops, pad):
    return policy_segmentation_inputs(
        prompts["input_ids"], prompts["attention_mask"], completions, mask, ref_token_id=model.config.ref_token_id,
        slot_token_ids=model.config.slot_token_ids, stop_token_ids=stops, pad_token_id=pad,
        mm_token_type_ids=prompts.get("mm_token_type_ids"),
    )


def test_shared_forward_gives_the_policy_log_probs_and_the_scoring_masks(rollout):
    model, processor, prompts, completions, mask, stops = rollout
    pad = processor.tokenizer.pad_token_id
    sequence = _sequence(model, prompts, completions, mask, stops, pad)
    assert sequence.exact.all()
    assert sequence.malformed.tolist() == [False, False, True, True]
    image_kwargs = {k: prompts[k] for k in ("pixel_values", "image_grid_thw")}
    image_embeddings = model.get_image_embeddings(prompts["sam_pixel_values"])
    valid = model.valid_mask_sizes(prompts["reshaped_input_sizes"])
    policy = copy.deepcopy(model.backbone)
    add_fused_lm_head(policy, outputs=("log_probs", "entropy"))
    shared_model = copy.copy(model)
    shared_model.backbone = policy  # the heads are model's; the hook sits on policy.base_model

    with torch.no_grad():
        log_probs, entropy, _, seg = shared_forward(
            policy, shared_model, sequence, image_embeddings, valid, completion_length=completions.shape[1],
            backbone_inputs=image_kwargs, compute_entropy=True,
        )
        # TRL's plain policy forward over [prompt | completion]
        ids = torch.cat([prompts["input_ids"], completions], 1)
        full_mask = torch.cat([prompts["attention_mask"], mask], 1)
        mm = torch.cat([prompts["mm_token_type_ids"], torch.zeros_like(completions)], 1)
        logits = model.backbone(input_ids=ids, attention_mask=full_mask, mm_token_type_ids=mm, logits_to_keep=0,
                                **image_kwargs).logits  # (B, P + C, V)
        start = prompts["input_ids"].shape[1]
        reference = logits[:, start - 1:-1].log_softmax(-1).gather(-1, completions[..., None])[..., 0]  # (B, C)
        # the scoring forward the rollout decodes masks with
        scoring = model.build_scoring_inputs(prompts["input_ids"], prompts["attention_mask"], completions, pad,
                                             stops[:1], prompts["mm_token_type_ids"])
        scored = model(input_ids=scoring["input_ids"], attention_mask=scoring["attention_mask"],
                       mm_token_type_ids=scoring["mm_token_type_ids"], image_embeddings=image_embeddings,
                       valid_mask_sizes=valid, **image_kwargs)

    assert log_probs.shape == entropy.shape == completions.shape
    scored_tokens = mask.bool()
    torch.testing.assert_close(log_probs[scored_tokens], reference[scored_tokens], atol=1e-4, rtol=1e-4)
    assert (log_probs[~scored_tokens] == 0).all()
    torch.testing.assert_close(seg.mask_logits, scored.mask_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(seg.confidence_logits, scored.confidence_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(seg.concept_values, scored.concept_values, atol=1e-4, rtol=1e-4)
    assert torch.equal(seg.concept_indices, scored.concept_indices)


def test_completions_that_go_on_after_the_reference_token_are_not_exact(rollout):
    model, processor, prompts, completions, mask, stops = rollout
    tokenizer = processor.tokenizer
    pad = tokenizer.pad_token_id
    ids = right_pad([tokenizer(c, add_special_tokens=False).input_ids for c in
                     ("<think> red </think> <REF_POS> red <|im_end|>", "<think> red </think> <REF_POS> <|im_end|>",
                      "<think> red </think> <|im_end|> red", "<think> red red red red red red red")], pad)
    only_eos = stops[:1]  # <REF_POS> not a stop token: the first row is scored after it
    sequence = _sequence(model, prompts, ids, _completion_mask(ids, only_eos), only_eos, pad)
    assert sequence.exact.tolist() == [False, True, True, True]
    # the extra <REF_POS> is shown only where the completion lacks one; the slot tokens always
    K = model.config.num_slots
    assert sequence.attention_mask[:, -K:].all()
    assert sequence.attention_mask[:, -K - 1].tolist() == [0, 0, 1, 1]
    assert sequence.malformed.tolist() == [False, False, True, True]


@pytest.mark.parametrize("shared", [True, False])
def test_one_backbone_forward_with_gradients_per_micro_batch(tiny, tmp_path, shared):
    """Counts the backbone's forwards during one GRPO step (one micro-batch): with the shared forward exactly one
    runs with gradients (generation and the rollout's mask decoding run without); the separate segmentation
    forward of ``shared_policy_forward=False`` makes it two."""
    from segcompass.training.grpo_trainer import SegCompassGRPOTrainer

    directory, processor, dataset = tiny
    model = SegCompassForReasoningSegmentation.from_pretrained(directory)
    trainer = SegCompassGRPOTrainer(
        model, args=tiny_grpo_config(tmp_path, max_steps=1, shared_policy_forward=shared),
        train_dataset=prepare_grpo_dataset(dataset, processor), processing_class=processor,
    )
    calls = []
    handle = model.backbone.base_model.register_forward_hook(
        lambda module, args, output: calls.append(torch.is_grad_enabled()))
    try:
        trainer.train()
    finally:
        handle.remove()
    assert sum(calls) == (1 if shared else 2)
    assert len(calls) > sum(calls)  # generation and the rollout's scoring forward ran without gradients
    entry = next(e for e in trainer.state.log_history if "seg/loss" in e)
    assert torch.isfinite(torch.tensor(entry["seg/loss"]))
