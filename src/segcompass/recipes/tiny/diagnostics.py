"""Where the reasoning goes wrong, step by step: teacher-forced accuracy of each part of the reference reasoning.

A synthetic reference reasoning lists facts and then decides: ``squares : small blue square at left , small red
square at right . closest to the bottom edge : small red square at right . target : small red square at right .``
Given the reference prefix, the model's greedy next token at every position of the reference tells which part it
would write wrong. Each reasoning splits at its last ``:`` before ``target``:

- **facts**: everything up to that ``:`` (the candidate list, the counts, the anchor's place);
- **decision**: the last fact, given the right facts (which candidate wins);
- **target**: the ``target : ... .`` line and the end of the reasoning, given everything before it.

A part counts as right when every one of its tokens is the model's top-1 prediction; for the last two parts that is
exactly "greedy decoding from the right prefix writes this part right". cIoU cannot tell a perception error (a wrong
fact) from a decision error; this can, per task family, from the teacher-forced forward pass the evaluation runs
anyway.
"""

from __future__ import annotations

from collections import defaultdict

import torch

__all__ = ["STEP_PARTS", "decision_positions", "reasoning_part_bounds", "reasoning_step_rows", "summarize_steps"]

STEP_PARTS = ("facts", "decision", "target")


def reasoning_part_bounds(tokens: list[int], target_id: int, colon_id: int) -> tuple[int, int] | None:
    """Where a reasoning's parts start: ``(facts_end, split)`` over its completion tokens, so that
    ``tokens[:facts_end]`` are the facts, ``tokens[facts_end:split]`` the decision and ``tokens[split:]`` the target
    line (from the last ``target``; the decision starts after the last ``:`` before it, at 0 when there is none).
    ``None`` for a reasoning without ``target``."""
    targets = [i for i, token in enumerate(tokens) if token == target_id]
    if not targets:
        return None
    split = targets[-1]
    colons = [i for i in range(split) if tokens[i] == colon_id]
    return (colons[-1] + 1 if colons else 0), split


def decision_positions(labels: torch.Tensor, tokenizer) -> torch.Tensor:
    """``(B, T)`` bool: the label positions of each reference reasoning's decision and target line (the parts after
    the facts, :func:`reasoning_part_bounds`); all False for a row without ``target``.

    Args:
        labels: ``(B, T)`` the reference completion's token ids where they are predicted, -100 elsewhere.
        tokenizer: the processor's tokenizer (for the ids of ``target`` and ``:``).
    """
    target_id, colon_id = tokenizer.convert_tokens_to_ids(["target", ":"])
    chosen = torch.zeros_like(labels, dtype=torch.bool)  # (B, T)
    for b in range(labels.shape[0]):
        positions = (labels[b] != -100).nonzero().flatten()  # (n,)
        bounds = reasoning_part_bounds(labels[b][positions].tolist(), target_id, colon_id)
        if bounds is not None:
            chosen[b, positions[bounds[0]:]] = True
    return chosen


def reasoning_step_rows(logits: torch.Tensor, labels: torch.Tensor, families: list[str], tokenizer) -> list[dict]:
    """Per sample, whether each part of its reference reasoning is predicted right.

    Args:
        logits: ``(B, T, vocab)`` language-model logits of a teacher-forced forward pass over every position.
        labels: ``(B, T)`` the reference completion's token ids where they are predicted, -100 elsewhere
            (:func:`~segcompass.recipes.tiny.data.batch_inputs` with ``completions=True``).
        families: the samples' task families.
        tokenizer: the processor's tokenizer (for the ids of ``target`` and ``:``).

    Returns:
        one dict per sample with a ``target`` token: ``family`` and a bool per :data:`STEP_PARTS` and ``all``.
    """
    target_id, colon_id = tokenizer.convert_tokens_to_ids(["target", ":"])
    predicted = logits[:, :-1].argmax(-1)  # (B, T-1): the prediction for position t + 1
    rows = []
    for b, family in enumerate(families):
        positions = (labels[b, 1:] != -100).nonzero().flatten()  # label positions minus one, (n,)
        if positions.numel() == 0:
            continue
        tokens = labels[b, 1:][positions]  # (n,)
        right = (predicted[b][positions] == tokens).tolist()
        bounds = reasoning_part_bounds(tokens.tolist(), target_id, colon_id)
        if bounds is None:
            continue
        facts_end, split = bounds
        parts = {"facts": all(right[:facts_end]), "decision": all(right[facts_end:split]),
                 "target": all(right[split:])}
        rows.append({"family": family, **parts, "all": all(parts.values())})
    return rows


def summarize_steps(rows: list[dict]) -> dict:
    """``{family: {"n": samples, "facts": rate, "decision": rate, "target": rate, "all": rate}}`` plus ``"all"``
    over every sample, families sorted."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["family"]].append(row)
        groups["all"].append(row)
    return {family: {"n": len(members), **{part: sum(m[part] for m in members) / len(members)
                                           for part in (*STEP_PARTS, "all")}}
            for family, members in sorted(groups.items())}
