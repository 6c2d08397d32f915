"""Concepts grouped by answer item (``concept_grouping="answer_items"``): the item masks, and slot k reading item k
only; and one support set over the whole answer list (``concept_grouping="answer"``)."""

import pytest
import torch

from segcompass import SegCompassConfig, SegCompassForReasoningSegmentation
from segcompass.modules.answer_items import (
    answer_item_counts,
    answer_item_masks,
    answer_mask,
    block_diagonal_provenance,
)
from segcompass.testing import tiny_segcompass_config

OPEN, SEP, CLOSE, REF = 7, 8, 9, 100


def test_item_masks_split_the_last_list_before_the_reference_token():
    # pad, "a : b c , d .", "target : e f , g , h ." REF slots...; a second ':' list comes last and wins
    ids = torch.tensor([
        [0, 0, 11, OPEN, 12, 13, SEP, 14, CLOSE, 15, OPEN, 16, 17, SEP, 18, SEP, 19, CLOSE, REF, 101, 102],
        [21, 22, OPEN, 23, SEP, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, REF, OPEN, 37],  # no close
    ])
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    mask[1, 5] = 0  # a hole: token 24 belongs to no item
    groups = answer_item_masks(ids, mask, REF, (OPEN, SEP, CLOSE), num_slots=2)
    assert groups.shape == (2, 2, ids.shape[1]) and groups.dtype == mask.dtype
    items = [[ids[b][groups[b, k].bool()].tolist() for k in range(2)] for b in range(2)]
    assert items[0] == [[16, 17], [18]]  # the third item (19) has no slot; the list after REF is not read
    assert items[1] == [[23], [25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36]]  # runs to REF without a close


def test_item_masks_fall_back_to_the_whole_sequence_in_slot_0():
    ids = torch.tensor([[0, 11, 12, SEP, 13, REF, 101], [11, 12, 13, 14, 15, 16, 17]])  # no open; no REF at all
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1], [1] * 7])
    groups = answer_item_masks(ids, mask, REF, (OPEN, SEP, CLOSE), num_slots=3)
    assert torch.equal(groups[:, 0], mask) and not groups[:, 1:].any()


def test_item_masks_read_the_answer_before_the_last_reference_token():
    # the prompt names REF too ("... output <REF_POS> after </think>"): the answer is the list before the last REF
    ids = torch.tensor([[0, 11, REF, 12, 13, OPEN, 14, SEP, 15, 16, CLOSE, REF, 101, 102, 0]])
    mask = torch.tensor([[0] + [1] * 13 + [0]])
    groups = answer_item_masks(ids, mask, REF, (OPEN, SEP, CLOSE), num_slots=3)
    assert [ids[0][groups[0, k].bool()].tolist() for k in range(3)] == [[14], [15, 16], []]
    padded = ids.clone()
    padded[0, -1] = REF  # a reference token on a padding position is not the answer's
    assert torch.equal(answer_item_masks(padded, mask, REF, (OPEN, SEP, CLOSE), num_slots=3), groups)


def test_answer_mask_is_every_item_and_falls_back_to_the_sequence():
    ids = torch.tensor([
        [11, REF, OPEN, 12, SEP, 13, SEP, 14, SEP, 15, CLOSE, REF, 101],  # four items: all of them, not only K
        [11, 12, 13, SEP, 14, 15, 16, 17, 18, 19, 20, REF, 101],  # no open token: every valid token
    ])
    mask = torch.ones_like(ids)
    mask[1, 0] = 0
    kept = answer_mask(ids, mask, REF, (OPEN, SEP, CLOSE))
    assert kept.dtype == mask.dtype and kept.shape == ids.shape
    assert ids[0][kept[0].bool()].tolist() == [12, 13, 14, 15]
    assert torch.equal(kept[1], mask[1])
    union = answer_item_masks(ids[:1], mask[:1], REF, (OPEN, SEP, CLOSE), num_slots=4).amax(1)  # (1, T)
    assert torch.equal(kept[:1], union)


def test_item_counts_are_the_objects_the_answer_names():
    ids = torch.tensor([
        [11, REF, OPEN, 12, 13, SEP, 14, SEP, 15, CLOSE, REF, 101],  # the prompt's REF comes first: three items
        [0, 0, 0, 11, OPEN, 40, CLOSE, REF, 101, 102, 103, 104],  # "target : none ." names one (the word "none")
        [0, 0, 0, 0, 0, 0, 11, OPEN, CLOSE, REF, 101, 102],  # an empty list names nothing
        [0, 11, 12, SEP, 13, 14, 15, 16, 17, REF, 101, 102],  # no list at all: no count
    ])
    mask = (ids != 0).long()
    counts = answer_item_counts(ids, mask, REF, (OPEN, SEP, CLOSE))
    assert counts.dtype == torch.long and counts.tolist() == [3, 1, 0, -1]


def test_block_diagonal_provenance():
    provenance = torch.arange(1, 13, dtype=torch.float).view(1, 2, 6)  # (B=1, K=2, N=6)
    full = block_diagonal_provenance(provenance)
    assert full.shape == (1, 2, 12)
    assert torch.equal(full[0, 0], torch.cat([provenance[0, 0], torch.zeros(6)]))
    assert torch.equal(full[0, 1], torch.cat([torch.zeros(6), provenance[0, 1]]))


def _grouped_model(selection="pooled"):
    torch.manual_seed(0)
    config = tiny_segcompass_config(num_slots=3, concept_grouping="answer_items",
                                    answer_item_token_ids=[OPEN, SEP, CLOSE], slot_query_inputs="concepts",
                                    concept_selection=selection)
    return SegCompassForReasoningSegmentation(config).eval()


def _inputs(model):
    body = [11, 12, 13, OPEN, 20, 21, SEP, 30, 31, 32, CLOSE]
    ids = torch.tensor([[*body, REF, *model.config.slot_token_ids]])
    return ids, torch.ones_like(ids)


def test_each_slot_reads_only_its_own_item():
    model = _grouped_model()
    ids, mask = _inputs(model)
    n, num_slots = model.config.max_concepts, model.config.num_slots
    with torch.no_grad():
        embeddings = model.get_image_embeddings(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
        states = model.backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        hook, last = states[model.config.sae_config.hook_layer], states[-1]
        out = model.segment_from_hidden_states(ids, mask, hook, last, embeddings)
        moved = hook.clone()
        moved[0, 7:10] += 3 * torch.randn(3, hook.shape[-1], generator=torch.Generator().manual_seed(1))  # item 1
        other = model.segment_from_hidden_states(ids, mask, moved, last, embeddings)
    assert out.concept_indices.shape == (1, num_slots * n)
    assert out.slot_concept_attention.shape == (1, num_slots, num_slots * n)
    tokens = (out.concept_token_activations[0] != 0).view(ids.shape[1], num_slots, n).any(-1)  # (T, K)
    assert tokens[:, 0].nonzero().flatten().tolist() == [4, 5]
    assert set(tokens[:, 1].nonzero().flatten().tolist()) <= {7, 8, 9} and tokens[:, 1].any()
    assert not tokens[:, 2].any() and not out.concept_mask[0, 2 * n:].any()  # no third item: no concepts
    attention = out.slot_concept_attention[0].view(num_slots, num_slots, n)
    assert attention[0, 1:].abs().sum() == 0 and attention[1, 0].abs().sum() == 0 and attention[1, 2].abs().sum() == 0
    # moving item 1's tokens changes slot 1 only
    torch.testing.assert_close(other.heatmap_logits[:, [0, 2]], out.heatmap_logits[:, [0, 2]])
    torch.testing.assert_close(other.mask_logits[:, [0, 2]], out.mask_logits[:, [0, 2]])
    assert not torch.allclose(other.heatmap_logits[:, 1], out.heatmap_logits[:, 1])


def test_no_concepts_ablation_zeroes_the_grouped_concepts_too():
    """``forward_grouped`` bypasses the interface's forward hooks: the ablation must still set every r_k to 0 (it
    was a silent no-op under ``"answer_items"``), and only inside the block."""
    from segcompass.interpret.ablations import ablate

    model = _grouped_model()
    ids, mask = _inputs(model)
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels)
        with ablate(model, "no_concepts"):
            ablated = model(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels)
            with ablate(model, "no_concepts"):  # nested: the inner block leaves the outer one's ablation on
                pass
            assert model(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels).concept_slots.abs().sum() == 0
        again = model(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels)
    assert ablated.concept_slots.abs().sum() == 0 and full.concept_slots.abs().sum() > 0
    assert not torch.allclose(ablated.heatmap_logits, full.heatmap_logits)
    assert "forward_grouped" not in vars(model.concept_interface)
    torch.testing.assert_close(again.heatmap_logits, full.heatmap_logits)


def test_grouped_model_trains_and_round_trips(tmp_path):
    model = _grouped_model("centered").train()
    ids, mask = _inputs(model)
    out = model(input_ids=ids, attention_mask=mask, sam_pixel_values=torch.zeros(1, 3, 64, 64))
    out.heatmap_logits.sum().backward()
    assert model.concept_interface.codebook.weight.grad.abs().sum() > 0
    assert model.concept_interface.baseline_batches == 1  # the baseline learns from the two non-empty items
    assert model.concept_interface.baseline.abs().sum() > 0
    model.eval().save_pretrained(tmp_path)
    reloaded = SegCompassForReasoningSegmentation.from_pretrained(tmp_path).eval()
    assert reloaded.config.concept_grouping == "answer_items"
    assert reloaded.config.answer_item_token_ids == [OPEN, SEP, CLOSE]
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask, sam_pixel_values=torch.zeros(1, 3, 64, 64))
        b = reloaded(input_ids=ids, attention_mask=mask, sam_pixel_values=torch.zeros(1, 3, 64, 64))
    torch.testing.assert_close(a.mask_logits, b.mask_logits)


def test_answer_grouping_pools_one_support_set_over_the_answer_list():
    """``concept_grouping="answer"``: every slot reads one support set, pooled over the answer's items only; the
    reasoning before the list (a rejected candidate) does not reach the masks."""
    torch.manual_seed(0)
    config = tiny_segcompass_config(num_slots=3, concept_grouping="answer", answer_item_token_ids=[OPEN, SEP, CLOSE],
                                    slot_query_inputs="concepts")
    model = SegCompassForReasoningSegmentation(config).eval()
    ids, mask = _inputs(model)  # items: tokens 4-5 and 7-9; tokens 0-2 are the reasoning before the list
    with torch.no_grad():
        embeddings = model.get_image_embeddings(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
        states = model.backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        hook, last = states[model.config.sae_config.hook_layer], states[-1]
        out = model.segment_from_hidden_states(ids, mask, hook, last, embeddings)
        noise = 3 * torch.randn(3, hook.shape[-1], generator=torch.Generator().manual_seed(1))
        before_list, in_list = hook.clone(), hook.clone()
        before_list[0, 0:3] += noise
        in_list[0, 7:10] += noise
        unchanged = model.segment_from_hidden_states(ids, mask, before_list, last, embeddings)
        changed = model.segment_from_hidden_states(ids, mask, in_list, last, embeddings)
    n = model.config.max_concepts
    assert out.concept_indices.shape == (1, n) and out.slot_concept_attention.shape == (1, 3, n)
    tokens = (out.concept_token_activations[0] != 0).any(-1)  # (T,) tokens any kept concept is read on
    assert set(tokens.nonzero().flatten().tolist()) <= {4, 5, 7, 8, 9} and tokens.any()
    torch.testing.assert_close(unchanged.mask_logits, out.mask_logits, rtol=0, atol=0)
    assert not torch.allclose(changed.heatmap_logits, out.heatmap_logits)


@pytest.mark.parametrize("overrides,match", [
    (dict(concept_grouping="phrases"), "concept_grouping"),
    (dict(concept_grouping="answer_items"), "answer_item_token_ids"),
    (dict(concept_grouping="answer_items", answer_item_token_ids=[1, 2]), "answer_item_token_ids"),
    (dict(concept_grouping="answer"), "answer_item_token_ids"),
    (dict(limit_instances_to_answer=True), "limit_instances_to_answer=True` needs `answer_item_token_ids"),
    (dict(limit_instances_to_answer="yes", answer_item_token_ids=[1, 2, 3]), "True or False"),
])
def test_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        SegCompassConfig.from_preset("tiny", **overrides)


def test_pipeline_runs_on_a_grouped_checkpoint(tiny_checkpoint_factory):
    """The pipeline's per-slot concepts read the (B, K, K·N) provenance: a slot lists only concepts of its own item
    (a random model's answer has no list, so only slot 0 has concepts: the fallback)."""
    import numpy as np
    from PIL import Image
    from transformers import pipeline

    directory = tiny_checkpoint_factory(num_slots=3, concept_grouping="answer_items", answer_item_token_ids=(7, 8, 9),
                                        slot_query_inputs="concepts")
    pipe = pipeline("reasoning-segmentation", model=str(directory))
    out = pipe(Image.fromarray(np.full((48, 80, 3), 127, np.uint8)), "the red circle", max_new_tokens=6, threshold=0.0,
               top_concepts=3)
    assert len(out["instances"]) == 3
    by_slot = {instance["slot"]: instance["concepts"] for instance in out["instances"]}
    assert len(by_slot[0]) == 3 and by_slot[1] == by_slot[2] == []


def test_limited_model_returns_the_answer_counts_and_the_pipeline_keeps_that_many(tiny_checkpoint_factory):
    """``limit_instances_to_answer``: ``outputs.instance_limits`` is the answer's item count, None when off; the
    pipeline keeps at most that many slots even when every slot passes the threshold."""
    import numpy as np
    from PIL import Image
    from transformers import pipeline

    config = tiny_segcompass_config(num_slots=3, answer_item_token_ids=[OPEN, SEP, CLOSE],
                                    limit_instances_to_answer=True)
    model = SegCompassForReasoningSegmentation(config).eval()
    ids, mask = _inputs(model)  # two items
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, sam_pixel_values=torch.zeros(1, 3, 64, 64))
    assert out.instance_limits.tolist() == [2]
    model.config.limit_instances_to_answer = False
    with torch.no_grad():
        assert model(input_ids=ids, attention_mask=mask, sam_pixel_values=torch.zeros(1, 3, 64, 64)).instance_limits \
            is None

    directory = tiny_checkpoint_factory(num_slots=3, answer_item_token_ids=(7, 8, 9), limit_instances_to_answer=True)
    pipe = pipeline("reasoning-segmentation", model=str(directory))
    image = Image.fromarray(np.full((48, 80, 3), 127, np.uint8))
    pipe.model.instance_limits = lambda input_ids, attention_mask: torch.ones(len(input_ids), dtype=torch.long)
    result = pipe(image, "the red circle", max_new_tokens=6, threshold=0.0, return_all_slots=True)
    scores = [instance["score"] for instance in result["instances"]]
    assert [instance["kept"] for instance in result["instances"]] == [k == int(np.argmax(scores)) for k in range(3)]
    pipe.model.instance_limits = lambda input_ids, attention_mask: None  # the option off: threshold 0 keeps all
    assert all(i["kept"] for i in pipe(image, "the red circle", max_new_tokens=6, threshold=0.0,
                                       return_all_slots=True)["instances"])
