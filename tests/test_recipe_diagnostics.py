"""The recipe's teacher-forced step diagnostic: which part of the reference reasoning the model would write wrong."""

import pytest
import torch

from segcompass.recipes.tiny import TinyRecipeConfig
from segcompass.recipes.tiny.diagnostics import reasoning_step_rows, summarize_steps


@pytest.fixture(scope="module")
def batch():
    from segcompass.recipes.tiny import build, data

    config = TinyRecipeConfig.smoke()
    _, processor = build.build_tiny_model_and_processor(config)
    samples = [s for s in data.make_split("validation", 24, config, "val") if "target :" in s.completion][:3]
    enc = data.batch_inputs(processor, samples, completions=True, append_slots=True)
    return processor.tokenizer, samples, enc


def _perfect_logits(labels, vocab):
    """Logits whose top-1 at position t is the label at t + 1 (a model that writes the reference)."""
    nxt = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1).clamp(min=0)  # (B, T)
    return torch.nn.functional.one_hot(nxt, vocab).float()  # (B, T, vocab)


def test_step_parts_split_at_the_last_colon_before_target(batch):
    tokenizer, samples, enc = batch
    labels = enc["labels"]
    logits = _perfect_logits(labels, len(tokenizer))
    families = [s.family for s in samples]
    rows = reasoning_step_rows(logits, labels, families, tokenizer)
    assert [r["family"] for r in rows] == families
    assert all(r["facts"] and r["decision"] and r["target"] and r["all"] for r in rows)
    # one wrong token in each part of sample 0: only that part fails
    ids = labels[0].tolist()
    target_id, colon_id = tokenizer.convert_tokens_to_ids(["target", ":"])
    target_at = max(i for i, t in enumerate(ids) if t == target_id)
    colon_at = max(i for i in range(target_at) if ids[i] == colon_id)
    first = min(i for i, t in enumerate(ids) if t != -100)
    for position, part in ((first, "facts"), (colon_at, "facts"), (colon_at + 1, "decision"),
                           (target_at - 1, "decision"), (target_at, "target"), (len(ids) - 1 - 4, "target")):
        if labels[0, position] == -100:
            continue
        broken = logits.clone()
        broken[0, position - 1] = 0
        broken[0, position - 1, (labels[0, position] + 1) % len(tokenizer)] = 1  # predicts another token there
        row = reasoning_step_rows(broken, labels, families, tokenizer)[0]
        assert {p for p in ("facts", "decision", "target") if not row[p]} == {part}, (position, part)
        assert not row["all"]


def test_summary_rates_per_family_and_overall():
    rows = [{"family": "spatial", "facts": True, "decision": False, "target": True, "all": False},
            {"family": "spatial", "facts": True, "decision": True, "target": True, "all": True},
            {"family": "counting", "facts": False, "decision": True, "target": False, "all": False}]
    summary = summarize_steps(rows)
    assert list(summary) == ["all", "counting", "spatial"]
    assert summary["spatial"] == {"n": 2, "facts": 1.0, "decision": 0.5, "target": 1.0, "all": 0.5}
    assert summary["all"]["n"] == 3 and summary["all"]["facts"] == pytest.approx(2 / 3)
    assert summarize_steps([]) == {}


def test_a_reasoning_without_target_line_is_skipped(batch):
    tokenizer, samples, enc = batch
    labels = enc["labels"].clone()
    target_id = tokenizer.convert_tokens_to_ids("target")
    labels[0][labels[0] == target_id] = -100
    logits = _perfect_logits(enc["labels"], len(tokenizer))
    rows = reasoning_step_rows(logits, labels, [s.family for s in samples], tokenizer)
    assert len(rows) == len(samples) - 1


def test_card_prints_the_step_table_only_when_the_run_measured_it():
    from segcompass.recipes.tiny.card import _step_section

    assert _step_section(None) == "" and _step_section({}) == ""
    text = _step_section({"all": {"n": 3, "facts": 2 / 3, "decision": 0.5, "target": 1.0, "all": 1 / 3},
                          "spatial": {"n": 2, "facts": 1.0, "decision": 0.5, "target": 1.0, "all": 0.5}})
    assert "| family | samples | facts | decision | target line | all |" in text
    assert "| spatial | 2 | 1.000 | 0.500 | 1.000 | 0.500 |" in text and "| all | 3 | 0.667 | 0.500 |" in text


def test_decision_positions_are_the_tokens_after_the_facts(batch):
    """`decision_positions` marks, per row, the label positions from the token after the last `:` before `target`
    to the end of the reasoning: the same split `reasoning_step_rows` scores as decision + target line."""
    from segcompass.recipes.tiny.diagnostics import decision_positions

    tokenizer, samples, enc = batch
    labels = enc["labels"]
    chosen = decision_positions(labels, tokenizer)
    assert chosen.shape == labels.shape and chosen.dtype == torch.bool
    target_id, colon_id = tokenizer.convert_tokens_to_ids(["target", ":"])
    for b, sample in enumerate(samples):
        ids = labels[b].tolist()
        last = max(i for i, t in enumerate(ids) if t != -100)
        target_at = max(i for i, t in enumerate(ids) if t == target_id)
        colon_at = max(i for i in range(target_at) if ids[i] == colon_id)
        assert chosen[b].nonzero().flatten().tolist() == list(range(colon_at + 1, last + 1))
        decided = tokenizer.decode(labels[b][chosen[b]].tolist())
        assert "target" in decided and ":" not in decided.split("target")[0]
    no_target = labels.clone()
    no_target[0][no_target[0] == target_id] = -100
    assert not decision_positions(no_target, tokenizer)[0].any()
    assert torch.equal(decision_positions(no_target, tokenizer)[1:], chosen[1:])


def test_reasoning_decision_loss_is_the_cross_entropy_of_the_decision_tokens(batch):
    """The reasoning stage's decision loss against a per-token loop: the mean next-token cross-entropy over the
    decision and target-line tokens only, times its weight, added to the inner extra loss."""
    from types import SimpleNamespace

    from segcompass.recipes.tiny.diagnostics import decision_positions
    from segcompass.recipes.tiny.reasoning import _decision_loss

    tokenizer, samples, enc = batch
    labels = enc["labels"]
    torch.manual_seed(0)
    out = SimpleNamespace(logits=torch.randn(*labels.shape, len(tokenizer)))
    record: list[float] = []
    loss = _decision_loss(tokenizer, 2.0, lambda batch, chunk, out: torch.tensor(5.0), record)(enc, samples, out)
    chosen = decision_positions(labels, tokenizer)
    terms = [torch.nn.functional.cross_entropy(out.logits[b, t - 1], labels[b, t])
             for b in range(labels.shape[0]) for t in range(1, labels.shape[1]) if chosen[b, t]]
    reference = torch.stack(terms).mean()
    assert len(terms) > 3 * len(samples)
    assert record == [pytest.approx(reference.item(), rel=1e-5)]
    assert loss.item() == pytest.approx(5.0 + 2.0 * reference.item(), rel=1e-5)
    everything = labels[labels != -100].numel()
    assert len(terms) < everything  # the facts are left out
