"""The answer format of SegCompass, in one place (paper §3.1, appendix B.3).

The policy answers ``<think>{reasoning}</think><REF_POS>``; the K concentration tokens ``<SLOT_0> ... <SLOT_{K-1}>``
are appended after ``<REF_POS>`` (teacher-forced, never sampled) so that their last hidden states become the slot
embeddings. Everything that builds, reads or checks that format lives here:

- the special tokens and the prompt template (:data:`DEFAULT_REF_TOKEN`, :data:`THINK_OPEN`, ...);
- :func:`reference_completion` (the supervised target) and :func:`extract_reasoning` (the reasoning of an answer);
- the one slot-append, on text (:func:`append_slots_to_text`) and on token ids (:func:`append_slot_ids`, what
  generation, GRPO scoring and the processor use);
- :func:`format_score`, the format reward of one decoded answer.

This module is a leaf: it imports torch only, so data loaders, the processor, the model and the trainers can all use
it without import cycles.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import NamedTuple

import torch

__all__ = [
    "DEFAULT_EOS_MARKERS",
    "DEFAULT_NUM_SLOTS",
    "DEFAULT_PROMPT_TEMPLATE",
    "DEFAULT_REF_TOKEN",
    "DEFAULT_SLOT_TOKEN_TEMPLATE",
    "INSTRUCTION_FIELD",
    "THINK_CLOSE",
    "THINK_OPEN",
    "SlotSequences",
    "answer_end",
    "append_slot_ids",
    "append_slots_to_text",
    "build_messages",
    "check_completions",
    "check_instructions",
    "check_num_slots",
    "extract_reasoning",
    "find_slot_positions",
    "format_score",
    "reference_completion",
    "render_prompt",
    "slot_token_strings",
    "unknown_words",
    "split_and_append_slot_ids",
]

DEFAULT_REF_TOKEN = "<REF_POS>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
DEFAULT_SLOT_TOKEN_TEMPLATE = "<SLOT_{}>"
DEFAULT_NUM_SLOTS = 6
INSTRUCTION_FIELD = "{instruction}"

DEFAULT_PROMPT_TEMPLATE = (
    "Request: {instruction}\n"
    "Find the object(s) in the image that the request refers to, comparing the candidates carefully. "
    "Reason step by step inside <think> </think>, then output exactly one <REF_POS> right after </think> "
    "and nothing else."
)
"""The instruction template (``{instruction}`` is replaced by the stripped instruction). One instruction, no
contradictions: reasoning in ``<think> </think>``, then exactly one ``<REF_POS>`` (what :func:`format_score`
checks). Used for both backbones."""

DEFAULT_EOS_MARKERS: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>", "<pad>")
"""End-of-sequence / padding strings that a decode with ``skip_special_tokens=False`` leaves at the end of a
response (Qwen2.5: ``<|im_end|>``, ``<|endoftext|>``; Llama-2/Vicuna (LLaVA-1.5): ``</s>``; Llama-3: ``<|eot_id|>``).
They are stripped from the end before the format check, so they never count as text after the reference token."""

_THINK_BLOCK = re.compile(re.escape(THINK_OPEN) + r"(.*?)" + re.escape(THINK_CLOSE), re.DOTALL)


# ----------------------------------------------------------------------------------------------- tokens
def check_num_slots(num_slots: int) -> None:
    """Raise ``ValueError`` unless ``num_slots`` (K) is a positive int."""
    if isinstance(num_slots, bool) or not isinstance(num_slots, int) or num_slots < 1:
        raise ValueError(f"num_slots must be a positive int (K, e.g. 6), got {num_slots!r}.")


def slot_token_strings(num_slots: int = DEFAULT_NUM_SLOTS, template: str = DEFAULT_SLOT_TOKEN_TEMPLATE) -> list[str]:
    """The K concentration-token strings, e.g. ``["<SLOT_0>", ..., "<SLOT_5>"]``."""
    check_num_slots(num_slots)
    if not isinstance(template, str) or template.count("{}") != 1:
        raise ValueError(
            f"slot_token_template must contain '{{}}' exactly once (e.g. '<SLOT_{{}}>'), got {template!r}."
        )
    return [template.format(k) for k in range(num_slots)]


# ----------------------------------------------------------------------------------------------- text
def reference_completion(reasoning: str | None, ref_token: str = DEFAULT_REF_TOKEN, *, sample_id: str = "?",
                         fix: str = "Fill the `reasoning` column, or pass a `completion`.") -> str:
    """The supervised policy target ``<think>{reasoning}</think>{ref_token}`` (paper appendix B.3).

    Raises:
        ValueError: when ``reasoning`` is empty (a well-formed answer needs a non-empty think block); the message
            names ``sample_id`` and ends with ``fix`` (what the caller's user should do).
    """
    if not isinstance(reasoning, str) or not reasoning.strip():
        raise ValueError(
            f"Sample {sample_id!r} has no reasoning ({reasoning!r}); a completion needs a non-empty "
            f"{THINK_OPEN} block. {fix}"
        )
    return f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{ref_token}"


def extract_reasoning(text: str) -> str:
    """The content of the last complete ``<think> ... </think>`` block of ``text``, stripped; ``""`` if there is none
    (an unclosed ``<think>`` counts as none).

    The last block, so that a decoded prompt + answer works too: the prompt template itself mentions
    ``<think> </think>``. A well-formed answer has exactly one block (:func:`format_score` checks that)."""
    blocks = _THINK_BLOCK.findall(text)
    return blocks[-1].strip() if blocks else ""


def build_messages(prompt_template: str, instruction: str, image=None, system_prompt: str | None = None
                   ) -> list[dict]:
    """The chat messages of one sample: optional system turn, then a user turn with the image part first and
    ``prompt_template`` with :data:`INSTRUCTION_FIELD` replaced by the stripped ``instruction``."""
    image_part: dict = {"type": "image"}
    if image is not None:
        image_part["image"] = image
    prompt = prompt_template.replace(INSTRUCTION_FIELD, instruction.strip())
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append({"role": "user", "content": [image_part, {"type": "text", "text": prompt}]})
    return messages


def render_prompt(tokenizer, chat_template: str | None, messages: list[dict], image_token: str,
                  add_generation_prompt: bool = True) -> str:
    """``messages`` rendered with ``chat_template`` (one image placeholder ``image_token``, not yet expanded).

    Raises:
        ValueError: without a chat template, or when the template does not render exactly one image placeholder.
    """
    if not chat_template:
        raise ValueError(
            "Neither the processor nor the tokenizer has a chat template; pass `chat_template=` to "
            "SegCompassProcessor (the backbone checkpoint's chat_template.jinja)."
        )
    text = tokenizer.apply_chat_template(messages, chat_template=chat_template, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)
    placeholders = text.count(image_token)
    if placeholders != 1:
        raise ValueError(
            f"The chat template rendered {placeholders} image placeholders ({image_token!r}) for one image; "
            "use a chat template that renders each {'type': 'image'} content part as the backbone's image token."
        )
    return text


def check_instructions(instructions: Sequence[str], reserved_tokens: Sequence[str], tokenizer=None,
                       max_tokens: int | None = None) -> None:
    """Raise ``ValueError`` (naming the instruction and the fix) for an empty instruction, one that contains a
    reserved token (``<REF_POS>``, a slot token, the image placeholder), or one longer than ``max_tokens`` tokens of
    ``tokenizer``."""
    for i, instruction in enumerate(instructions):
        if not instruction.strip():
            raise ValueError(
                f"Instruction {i} is empty ({instruction!r}); pass the referring expression or question to answer."
            )
        for token in reserved_tokens:
            if token in instruction:
                raise ValueError(
                    f"Instruction {i} contains the reserved token {token!r}; remove it (the processor places "
                    "the image, reference and slot tokens itself)."
                )
    if max_tokens is None or tokenizer is None:
        return
    encoded = tokenizer([s.strip() for s in instructions], add_special_tokens=False)["input_ids"]
    for i, ids in enumerate(encoded):
        if len(ids) > max_tokens:
            raise ValueError(
                f"Instruction {i} is {len(ids)} tokens long, more than the limit of {max_tokens} tokens; shorten it, "
                "or raise the processor's `max_length`."
            )


def unknown_words(tokenizer, text: str) -> list[str]:
    """The whitespace-separated words of ``text`` that ``tokenizer`` maps (partly) to its unknown token, in order,
    without repeats; ``[]`` for tokenizers without an unknown token (byte-level BPE reads every word)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return []
    words = list(dict.fromkeys(text.split()))
    if not words:
        return []
    encoded = tokenizer(words, add_special_tokens=False)["input_ids"]
    return [word for word, ids in zip(words, encoded) if unk in ids]


def check_completions(completions: Sequence[str], reserved_tokens: Sequence[str]) -> None:
    """Raise ``ValueError`` for a teacher-forced completion that contains a reserved token (a slot token or the image
    placeholder): completions are answer text only."""
    for i, completion in enumerate(completions):
        for token in reserved_tokens:
            if token in completion:
                raise ValueError(
                    f"Completion {i} contains the reserved token {token!r}; pass the answer text only (slot "
                    "tokens are appended with `append_slots=True`)."
                )


def append_slots_to_text(completion: str, ref_token: str, slot_tokens: Sequence[str]) -> tuple[str, bool]:
    """``completion`` + (``ref_token`` when it has none) + the slot tokens, and whether ``ref_token`` was missing.

    The text form of :func:`append_slot_ids` for teacher-forced answers (the processor's ``append_slots=True``)."""
    missing = ref_token not in completion
    return completion + (ref_token if missing else "") + "".join(slot_tokens), missing


def _strip_trailing_markers(text: str, markers: Sequence[str]) -> str:
    """Remove trailing whitespace and any run of ``markers`` at the end of ``text``."""
    text = text.rstrip()
    changed = True
    while changed:
        changed = False
        for marker in markers:
            if marker and text.endswith(marker):
                text = text[: -len(marker)].rstrip()
                changed = True
    return text


def format_score(
    text: str,
    *,
    ref_token: str = DEFAULT_REF_TOKEN,
    think_max_chars: int = 2048,
    eos_markers: Sequence[str] = DEFAULT_EOS_MARKERS,
    max_gap_words: int | None = None,
) -> float:
    """Format score of one response, in {0.0, 0.9, 1.0} (paper appendix B.3).

    Valid (else 0.0) iff the response has exactly one ``<think>…</think>`` block whose content has a non-whitespace
    character, and exactly one ``ref_token``, placed after ``</think>``. A valid response scores 1.0, downgraded to
    0.9 if the think content is longer than ``think_max_chars`` characters, if non-whitespace text precedes
    ``<think>``, or if non-whitespace text follows ``ref_token`` (trailing ``eos_markers`` excluded).

    Args:
        text: the decoded response.
        ref_token: the reference-position token.
        think_max_chars: length limit of the think content (characters, whitespace included).
        eos_markers: strings stripped (repeatedly) from the end of the response before the check; ``()`` to count
            them as text.
        max_gap_words: if set, more than this many whitespace-separated words between ``</think>`` and
            ``ref_token`` also downgrade to 0.9 (the authors' code uses 10; the paper has no such rule).

    Example:
        >>> format_score("<think>the red mug</think><REF_POS>")
        1.0
        >>> format_score("Sure. <think>the red mug</think><REF_POS>")
        0.9
        >>> format_score("<think>the red mug</think>")
        0.0
    """
    if not isinstance(text, str):
        raise ValueError(f"format_score expects the response text as a str, got {type(text).__name__}.")
    if not ref_token:
        raise ValueError("`ref_token` must be a non-empty string such as '<REF_POS>'.")
    text = _strip_trailing_markers(text, eos_markers)
    # Hard rules: any violation is 0.0.
    if text.count(THINK_OPEN) != 1 or text.count(THINK_CLOSE) != 1:
        return 0.0
    open_at = text.index(THINK_OPEN)
    close_at = text.index(THINK_CLOSE)
    if close_at < open_at:
        return 0.0
    content = text[open_at + len(THINK_OPEN) : close_at]
    if not content.strip():
        return 0.0
    think_end = close_at + len(THINK_CLOSE)
    if text.count(ref_token) != 1:
        return 0.0
    ref_at = text.index(ref_token)
    if ref_at < think_end:
        return 0.0
    # Soft rules: any one downgrades to 0.9.
    if len(content) > think_max_chars:
        return 0.9
    if text[:open_at].strip() or text[ref_at + len(ref_token) :].strip():
        return 0.9
    if max_gap_words is not None and len(text[think_end:ref_at].split()) > max_gap_words:
        return 0.9
    return 1.0


# ----------------------------------------------------------------------------------------------- token ids
class SlotSequences(NamedTuple):
    """Result of :func:`append_slot_ids`."""

    input_ids: torch.Tensor
    """``(B, T')`` prompt + answer (cut after its first ``<REF_POS>``) + ``<SLOT_0> ... <SLOT_{K-1}>``, left-padded."""
    attention_mask: torch.Tensor
    """``(B, T')`` 1 on every kept token, 0 on padding."""
    completion_ids: list[torch.Tensor]
    """B tensors ``(t_b,)``: each answer as scored (ends with ``<REF_POS>``)."""
    malformed: torch.Tensor
    """``(B,)`` bool: answers without ``<REF_POS>`` (one was appended after the answer, cut at its first stop
    token)."""
    slot_positions: torch.Tensor
    """``(B, K)`` long: the column of ``<SLOT_k>`` in each row (the last K columns, since rows are left-padded)."""
    mm_token_type_ids: torch.Tensor | None = None
    """``(B, T')`` the prompt's modality ids moved along, 0 (text) on the answer and slots; ``None`` if not given."""


def answer_end(tokens: Sequence[int], ref_token_id: int, stop_token_ids: Collection[int]) -> tuple[int, bool]:
    """The answer rule on one generated sequence: ``(end, has_ref)`` such that ``tokens[:end]`` is the answer - up
    to and including its first ``<REF_POS>``, or, without one (malformed), up to its first stop token (exclusive; the
    whole sequence when there is none). :func:`append_slot_ids` and the GRPO shared forward
    (:func:`segcompass.training.grpo_forward.policy_segmentation_inputs`) both cut with it."""
    tokens = list(tokens)
    if ref_token_id in tokens:
        return tokens.index(ref_token_id) + 1, True
    return next((i for i, t in enumerate(tokens) if t in stop_token_ids), len(tokens)), False


def append_slot_ids(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    *,
    ref_token_id: int,
    slot_token_ids: Sequence[int] | torch.Tensor,
    pad_token_id: int,
    stop_token_ids: Sequence[int] = (),
    mm_token_type_ids: torch.Tensor | None = None,
) -> SlotSequences:
    """The one slot-append on token ids: prompt + answer cut at its first ``<REF_POS>`` (appended when missing) +
    the K slot tokens, left-padded (what generation, GRPO scoring and the processor all use).

    An answer without ``<REF_POS>`` is cut at its first stop token (``stop_token_ids`` or ``pad_token_id``) and
    flagged ``malformed``; slot tokens inside an answer are dropped (they are never sampled).

    Args:
        prompt_ids, prompt_mask (`(B, Tp)`): the prompts (any padding side); prompt_mask 1 on real tokens.
        completion_ids (`(B, Tc)`): the answers' tokens (e.g. ``generate`` output after the prompt; right padding
            with ``pad_token_id`` is cut off).
        mm_token_type_ids (`(B, Tp)`, *optional*): Qwen2.5-VL modality ids of the prompts.

    Returns:
        :class:`SlotSequences`.
    """
    prompt_ids = torch.as_tensor(prompt_ids)
    prompt_mask = torch.as_tensor(prompt_mask, device=prompt_ids.device)
    completion_ids = torch.as_tensor(completion_ids, device=prompt_ids.device)
    if prompt_ids.ndim != 2 or tuple(prompt_mask.shape) != tuple(prompt_ids.shape):
        raise ValueError(
            f"prompt_ids and prompt_mask must both be (batch, length), got {tuple(prompt_ids.shape)} and "
            f"{tuple(prompt_mask.shape)}."
        )
    if completion_ids.ndim != 2 or completion_ids.shape[0] != prompt_ids.shape[0]:
        raise ValueError(
            f"completion_ids must be (batch, length) with the prompts' batch size {prompt_ids.shape[0]}, got "
            f"{tuple(completion_ids.shape)}."
        )
    if mm_token_type_ids is not None and tuple(mm_token_type_ids.shape) != tuple(prompt_ids.shape):
        raise ValueError(
            f"mm_token_type_ids has shape {tuple(mm_token_type_ids.shape)} but the prompts have "
            f"{tuple(prompt_ids.shape)}; they must match."
        )
    empty = (~prompt_mask.bool().any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"Prompt rows {empty} have no valid token (attention mask all 0); drop them first.")
    slot_ids = torch.as_tensor(slot_token_ids, dtype=prompt_ids.dtype, device=prompt_ids.device)  # (K,)
    slot_set = set(slot_ids.tolist())
    stop = set(stop_token_ids) | {pad_token_id}
    rows, types, completions, malformed = [], [], [], []
    for b in range(prompt_ids.shape[0]):
        keep = prompt_mask[b].bool()
        prompt = prompt_ids[b][keep]
        completion = [t for t in completion_ids[b].tolist() if t not in slot_set]  # slots are never sampled
        end, has_ref = answer_end(completion, ref_token_id, stop)
        completion = completion[:end] if has_ref else completion[:end] + [ref_token_id]
        malformed.append(not has_ref)
        completion_t = torch.tensor(completion, dtype=prompt.dtype, device=prompt.device)
        completions.append(completion_t)
        rows.append(torch.cat([prompt, completion_t, slot_ids]))
        if mm_token_type_ids is not None:
            prompt_types = mm_token_type_ids[b][keep]
            types.append(torch.cat([prompt_types, prompt_types.new_zeros(len(completion) + len(slot_ids))]))
    length = max(len(r) for r in rows)
    input_ids = prompt_ids.new_full((len(rows), length), pad_token_id)  # (B, T')
    attention_mask = torch.zeros_like(input_ids)  # (B, T')
    for b, row in enumerate(rows):
        input_ids[b, length - len(row):] = row
        attention_mask[b, length - len(row):] = 1
    first_slot = length - len(slot_ids)
    slot_positions = torch.arange(first_slot, length, device=input_ids.device).expand(len(rows), -1)  # (B, K)
    padded_types = None
    if mm_token_type_ids is not None:
        padded_types = mm_token_type_ids.new_zeros(input_ids.shape)  # (B, T')
        for b, row in enumerate(types):
            padded_types[b, length - len(row):] = row
    return SlotSequences(input_ids, attention_mask, completions, torch.tensor(malformed), slot_positions.clone(),
                         padded_types)


def find_slot_positions(input_ids: torch.Tensor, slot_token_ids: Sequence[int] | torch.Tensor,
                        slot_tokens: Sequence[str] | None = None) -> torch.Tensor:
    """``(B, K)`` long: the column of ``<SLOT_k>`` in each row of ``input_ids`` ``(B, T)``.

    Raises:
        ValueError: when a row does not hold each slot token exactly once (names the rows, the counts and the fix).
    """
    input_ids = torch.as_tensor(input_ids)
    slot_ids = torch.as_tensor(slot_token_ids, device=input_ids.device)
    matches = input_ids.unsqueeze(-1) == slot_ids  # (B, T, K)
    counts = matches.sum(1)  # (B, K)
    if not bool((counts == 1).all()):
        bad = sorted(set((counts != 1).nonzero()[:, 0].tolist()))
        names = list(slot_tokens) if slot_tokens is not None else slot_ids.tolist()
        raise ValueError(
            f"Each row must contain each of the {len(names)} slot tokens {names} exactly once; rows {bad} do not "
            f"(counts {counts[bad].tolist()}). Append them with `processor.append_slot_tokens(...)` or "
            "`processor(..., append_slots=True)`."
        )
    return matches.to(torch.long).argmax(1)  # (B, K)


def split_and_append_slot_ids(
    input_ids: torch.Tensor,
    prompt_length: int | None,
    attention_mask: torch.Tensor | None = None,
    *,
    ref_token_id: int,
    slot_token_ids: Sequence[int],
    pad_token_id: int | None,
    stop_token_ids: Sequence[int] = (),
    mm_token_type_ids: torch.Tensor | None = None,
) -> SlotSequences:
    """:func:`append_slot_ids` on ``generate``-style sequences ``(B, T)``: the first ``prompt_length`` columns are the
    (left-padded) prompts, the rest the answers (their padding, ``attention_mask == 0``, stops an answer).

    Raises:
        ValueError: on a missing / out-of-range ``prompt_length``, mismatched shapes, or rows that already hold slot
            tokens.
    """
    input_ids = torch.as_tensor(input_ids)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}.")
    length = input_ids.shape[1]
    if prompt_length is None or not 0 < int(prompt_length) <= length:
        raise ValueError(
            f"prompt_length must be in [1, {length}] (the columns that hold the prompt, e.g. "
            f"inputs['input_ids'].shape[1] before generate), got {prompt_length!r}."
        )
    pad_value = pad_token_id if pad_token_id is not None else 0
    if attention_mask is None:
        attention_mask = (input_ids != pad_token_id).long() if pad_token_id is not None else torch.ones_like(input_ids)
    attention_mask = torch.as_tensor(attention_mask, device=input_ids.device)
    for name, tensor in (("attention_mask", attention_mask), ("mm_token_type_ids", mm_token_type_ids)):
        if tensor is not None and tuple(tensor.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)} but input_ids has {tuple(input_ids.shape)}; they must "
                "match."
            )
    valid = attention_mask.bool()
    slot_ids = torch.tensor(list(slot_token_ids), dtype=input_ids.dtype, device=input_ids.device)
    has_slots = (torch.isin(input_ids, slot_ids) & valid).any(dim=1)
    if has_slots.any():
        raise ValueError(
            f"Rows {has_slots.nonzero().flatten().tolist()} already contain slot tokens; append them only once."
        )
    cut = int(prompt_length)
    answers = input_ids[:, cut:].masked_fill(~valid[:, cut:], pad_value)  # (B, T - Tp), padding stops an answer
    return append_slot_ids(
        input_ids[:, :cut], attention_mask[:, :cut], answers, ref_token_id=ref_token_id,
        slot_token_ids=slot_ids, pad_token_id=pad_value, stop_token_ids=stop_token_ids,
        mm_token_type_ids=None if mm_token_type_ids is None else mm_token_type_ids[:, :cut],
    )
