"""Rewards for GRPO on the reasoning path (paper §3.3, §4.1 and appendix B.3).

reward = 0.3 · format score + 0.7 · mask score

* :func:`format_reward_score` scores one response in {0.0, 0.9, 1.0} with the rules of appendix B.3
  (:mod:`segcompass.answer_format`).
* :func:`mask_reward_score` scores the predicted slot masks of one response against the ground truth: soft IoU for
  one object, Hungarian-matched mean soft IoU over the confident slots for several (with the empty-side rules).
* :func:`combined_reward_score` is the weighted sum. Both live in :mod:`.reward_scores`, with the soft-IoU convention.
* :class:`FormatReward`, :class:`MaskReward` and :class:`SegmentationReward` (with the default instances
  :data:`format_reward`, :data:`mask_reward`, :data:`segmentation_reward`) adapt them to TRL's reward-function
  convention ``reward_func(prompts=..., completions=..., completion_ids=..., **columns) -> list[float | None]``.
  TRL logs each under its ``__name__`` (``rewards/format_reward/mean`` ...). Either pass
  ``reward_funcs=[format_reward, mask_reward], reward_weights=[0.3, 0.7]`` (TRL also logs each part), or
  ``reward_funcs=[segmentation_reward]``; with TRL's default ``multi_objective_aggregation="sum_then_normalize"``
  both give the same advantages.

Where the paper leaves a choice open, the choice taken here (the authors' variants are options, never defaults):

* Format: exactly one ``<think>`` and one ``</think>`` tag, in that order (a stray or nested tag is invalid);
  the 2048-character limit applies to the raw think content; a documented set of end-of-sequence markers at the end
  of the response is stripped before the "text after the reference token" check. ``max_gap_words`` reproduces
  the authors' extra rule (> 10 words between ``</think>`` and the reference token → 0.9); off by default.
* Mask, multi-object: slots are kept when their confidence *probability* is ≥ ``confidence_threshold`` (0.5);
  ``denominator="max"`` divides the matched overlap by ``max(K', G)`` as the authors' code does, penalising
  unmatched slots and instances; the default ``"matched"`` is the paper's mean over matched pairs.
* Mask, single-object: chosen automatically when there is one slot and one instance; with
  ``multi_object=False`` and several slots the most confident slot (slot 0 without confidences) is scored.
  Confidences play no part in the single-object score (paper: no auxiliary terms).
* The paper's §4.1 also mentions "a binary confidence score (1 if matched, 0 otherwise)" for multi-object data
  but appendix B.3, which defines the score, has no such term; it is not added.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from ..answer_format import DEFAULT_EOS_MARKERS, DEFAULT_REF_TOKEN, format_score
from ..utils.logging import get_logger
from .reward_scores import combined_reward_score, mask_reward_score, mask_stack
from .targets import masks_on_grid

logger = get_logger(__name__)

__all__ = [
    "DEFAULT_EOS_MARKERS",
    "FormatReward",
    "MaskReward",
    "SegmentationReward",
    "combined_reward_score",
    "completion_text",
    "format_reward",
    "format_reward_score",
    "mask_reward",
    "mask_reward_score",
    "segmentation_reward",
]

format_reward_score = format_score
"""Alias of :func:`segcompass.answer_format.format_score` (the format rule lives with the answer format).
:func:`mask_reward_score` and :func:`combined_reward_score` live in :mod:`.reward_scores` and are importable here."""


# ----------------------------------------------------------------------------------------------- TRL adapters
def _check_column(values: Any, name: str, what: str = "one entry per completion") -> None:
    """A per-row column must be a list (or tuple / batched tensor), never a string or a scalar: a string would be
    scored character by character."""
    if isinstance(values, (list, tuple)):
        return
    if isinstance(values, (str, bytes, dict)) or not (hasattr(values, "__len__") and hasattr(values, "__getitem__")):
        raise ValueError(f"`{name}` must be a list with {what}, got {type(values).__name__}.")


def completion_text(completion: Any) -> str:
    """The response text of one TRL completion.

    Accepts a plain string (standard prompts) or a chat list ``[{"role": "assistant", "content": ...}]``
    (conversational prompts; the last assistant message is used, and a ``content`` given as a list of parts
    contributes its ``{"type": "text", "text": ...}`` parts, joined).
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        messages = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in messages if m.get("role", "assistant") == "assistant"]
        if not assistant:
            raise ValueError(
                "A chat-list completion must contain an assistant message {'role': 'assistant', 'content': ...}, "
                f"got roles {[m.get('role') for m in messages]}."
            )
        content = assistant[-1].get("content", "")
        if isinstance(content, str):
            return content
        if isinstance(content, (list, tuple)):
            texts = [part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"]
            odd = [t for t in texts if not isinstance(t, str)]
            if odd:
                raise ValueError(
                    f"In a chat-list completion, a text part's 'text' must be a str, got {type(odd[0]).__name__}."
                )
            return "".join(texts)
        raise ValueError(
            f"Unsupported message content of type {type(content).__name__}; expected str or a list of parts."
        )
    raise ValueError(
        f"A completion must be a str or a chat list of messages, got {type(completion).__name__}."
    )


class FormatReward:
    """TRL reward function: :func:`format_reward_score` of each completion.

    Never returns None. Keyword options are those of :func:`format_reward_score`; ``name`` is what TRL logs
    (``rewards/<name>/mean``).

    Example:
        >>> format_reward(completions=["<think>a</think><REF_POS>", [{"role": "assistant", "content": "no"}]])
        [1.0, 0.0]
    """

    def __init__(
        self,
        *,
        ref_token: str = DEFAULT_REF_TOKEN,
        think_max_chars: int = 2048,
        eos_markers: Sequence[str] = DEFAULT_EOS_MARKERS,
        max_gap_words: int | None = None,
        name: str = "format_reward",
    ) -> None:
        self.ref_token = ref_token
        self.think_max_chars = think_max_chars
        self.eos_markers = tuple(eos_markers)
        self.max_gap_words = max_gap_words
        self.__name__ = name

    def score(self, completion: Any) -> float:
        return format_reward_score(
            completion_text(completion),
            ref_token=self.ref_token,
            think_max_chars=self.think_max_chars,
            eos_markers=self.eos_markers,
            max_gap_words=self.max_gap_words,
        )

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        _check_column(completions, "completions", "one completion per row")
        return [self.score(c) for c in completions]

    def __repr__(self) -> str:
        return f"FormatReward(name={self.__name__!r}, ref_token={self.ref_token!r})"


class MaskReward:
    """TRL reward function: :func:`mask_reward_score` of each completion's predicted slot masks.

    Reads these per-row keyword arguments (lists of length B·G, as TRL passes them):

    * ``pred_masks``: one ``(K, H, W)`` (or ``(H, W)``) probability tensor/array per completion. TRL does not
      produce these: the SegCompass GRPO trainer decodes them after generation and passes them through
      ``extra_fields``. Missing → ``ValueError``.
    * ``pred_confidences`` (optional): one ``(K,)`` probability vector per completion; missing or None → every
      slot is kept.
    * ``masks``: the dataset's ground truth per row, in any form the datasets give: the SegCompass schema's list of
      COCO RLE dicts (``[]`` for no target), tensors/arrays ``(G, H, W)`` or ``(H, W)``, nested lists. Integer
      masks read nonzero as foreground; float masks must lie in ``[0, 1]``.

    The ground truth is stored at the original image resolution; it is resized here to the prediction grid
    ``(H, W)`` as soft targets (area averaging) by :func:`segcompass.training.targets.masks_on_grid`, the package's
    one ground-truth reader. ``gt_layout="letterbox"`` (default) assumes the predictions live in SAM's square frame
    (image scaled so its longest side fits, padded bottom/right); ``"stretch"`` assumes the image was resized to
    ``(H, W)`` without keeping the aspect ratio. Ground truth already at ``(H, W)`` is used as is. RLE rows repeated
    across a prompt's generations are decoded once per call.

    Returns None for a row (TRL: NaN, left out of the mean; a row whose every reward is None gets advantage 0) only
    when the reward cannot be computed: its ``pred_masks`` entry is None (no masks were decoded for that
    completion) or its ``masks`` entry is None (the row has no annotation, as opposed to ``[]``, no target). A
    completion with a malformed format still gets a mask score.
    """

    def __init__(
        self,
        *,
        confidence_threshold: float = 0.5,
        multi_object: bool | None = None,
        denominator: Literal["matched", "max"] = "matched",
        gt_layout: Literal["letterbox", "stretch"] = "letterbox",
        name: str = "mask_reward",
    ) -> None:
        if gt_layout not in ("letterbox", "stretch"):
            raise ValueError(f"`gt_layout` must be 'letterbox' or 'stretch', got {gt_layout!r}.")
        if denominator not in ("matched", "max"):
            raise ValueError(f"`denominator` must be 'matched' or 'max', got {denominator!r}.")
        self.confidence_threshold = confidence_threshold
        self.multi_object = multi_object
        self.denominator = denominator
        self.gt_layout = gt_layout
        self.__name__ = name

    def scores(
        self,
        completions: Sequence[Any],
        pred_masks: Sequence[Any] | None,
        pred_confidences: Sequence[Any] | None,
        masks: Sequence[Any] | None,
    ) -> list[float | None]:
        _check_column(completions, "completions", "one completion per row")
        n = len(completions)
        if pred_masks is None:
            raise ValueError(
                f"{self.__name__} needs the predicted masks as the `pred_masks` keyword (one (K, H, W) probability "
                "array per completion). TRL's GRPOTrainer does not produce them: train with SegCompass's GRPO "
                "trainer, which decodes the masks after generation and passes them to the reward functions, or call "
                "mask_reward_score directly."
            )
        if masks is None:
            raise ValueError(
                f"{self.__name__} needs the ground truth as the `masks` column (the SegCompass dataset schema); the "
                "dataset rows reaching the trainer have no `masks` key."
            )
        _check_column(pred_masks, "pred_masks")
        _check_column(masks, "masks")
        if pred_confidences is not None:
            _check_column(pred_confidences, "pred_confidences")
        lengths = {"pred_masks": len(pred_masks), "masks": len(masks)}
        if pred_confidences is not None:
            lengths["pred_confidences"] = len(pred_confidences)
        wrong = {k: v for k, v in lengths.items() if v != n}
        if wrong:
            raise ValueError(f"Expected one entry per completion ({n}) in every column, got lengths {wrong}.")

        if pred_confidences is None and self.multi_object is not False:
            logger.warning_once(
                f"{self.__name__}: no `pred_confidences` given, so every predicted slot counts as kept in the "
                "multi-object score. Pass the slot confidence probabilities to apply the confidence threshold."
            )
        cache: dict = {}  # RLE rows repeated across a prompt's generations are decoded once per call
        letterbox = self.gt_layout == "letterbox"
        out: list[float | None] = []
        for i in range(n):
            pred, gt = pred_masks[i], masks[i]
            if pred is None or gt is None:
                out.append(None)
                continue
            pred_t = mask_stack(pred, f"pred_masks[{i}]", "K")  # (K, H, W)
            gt_t = masks_on_grid(gt, tuple(pred_t.shape[-2:]), letterbox=letterbox, cache=cache,
                                 where=f"masks[{i}]").to(pred_t.device)  # (G, H, W)
            conf = pred_confidences[i] if pred_confidences is not None else None
            out.append(
                mask_reward_score(
                    pred_t,
                    conf,
                    gt_t,
                    confidence_threshold=self.confidence_threshold,
                    multi_object=self.multi_object,
                    denominator=self.denominator,
                )
            )
        return out

    def __call__(
        self,
        completions: Sequence[Any],
        pred_masks: Sequence[Any] | None = None,
        pred_confidences: Sequence[Any] | None = None,
        masks: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        return self.scores(completions, pred_masks, pred_confidences, masks)

    def __repr__(self) -> str:
        return (
            f"MaskReward(name={self.__name__!r}, confidence_threshold={self.confidence_threshold}, "
            f"multi_object={self.multi_object}, denominator={self.denominator!r}, gt_layout={self.gt_layout!r})"
        )


class SegmentationReward:
    """TRL reward function: ``format_weight · format + mask_weight · mask`` per completion (paper: 0.3 / 0.7).

    Takes the same keyword arguments as :class:`MaskReward`; returns None where the mask score is None (see
    there), since a format-only value would not be comparable with the others in the group. When TRL passes
    ``log_metric``, the batch means of both parts are logged as ``<name>/format`` and ``<name>/mask``.
    """

    def __init__(
        self,
        *,
        format_weight: float = 0.3,
        mask_weight: float = 0.7,
        ref_token: str = DEFAULT_REF_TOKEN,
        think_max_chars: int = 2048,
        eos_markers: Sequence[str] = DEFAULT_EOS_MARKERS,
        max_gap_words: int | None = None,
        confidence_threshold: float = 0.5,
        multi_object: bool | None = None,
        denominator: Literal["matched", "max"] = "matched",
        gt_layout: Literal["letterbox", "stretch"] = "letterbox",
        name: str = "segmentation_reward",
    ) -> None:
        self.format_weight = format_weight
        self.mask_weight = mask_weight
        self.format = FormatReward(
            ref_token=ref_token, think_max_chars=think_max_chars, eos_markers=eos_markers, max_gap_words=max_gap_words
        )
        self.mask = MaskReward(
            confidence_threshold=confidence_threshold,
            multi_object=multi_object,
            denominator=denominator,
            gt_layout=gt_layout,
            name=name,
        )
        self.__name__ = name

    def __call__(
        self,
        completions: Sequence[Any],
        pred_masks: Sequence[Any] | None = None,
        pred_confidences: Sequence[Any] | None = None,
        masks: Sequence[Any] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        formats = self.format(completions)
        mask_scores = self.mask.scores(completions, pred_masks, pred_confidences, masks)
        out: list[float | None] = []
        for f, m in zip(formats, mask_scores):
            out.append(None if m is None else combined_reward_score(
                f, m, format_weight=self.format_weight, mask_weight=self.mask_weight
            ))
        if log_metric is not None:
            pairs = [(f, m) for f, m in zip(formats, mask_scores) if m is not None]
            if pairs:
                log_metric(f"{self.__name__}/format", sum(f for f, _ in pairs) / len(pairs))
                log_metric(f"{self.__name__}/mask", sum(m for _, m in pairs) / len(pairs))
        return out

    def __repr__(self) -> str:
        return (
            f"SegmentationReward(name={self.__name__!r}, format_weight={self.format_weight}, "
            f"mask_weight={self.mask_weight}, mask={self.mask!r})"
        )


format_reward = FormatReward()
"""Default :class:`FormatReward` (paper settings), logged by TRL as ``rewards/format_reward/mean``."""

mask_reward = MaskReward()
"""Default :class:`MaskReward` (paper settings), logged by TRL as ``rewards/mask_reward/mean``."""

segmentation_reward = SegmentationReward()
"""Default :class:`SegmentationReward` (0.3 · format + 0.7 · mask), logged as ``rewards/segmentation_reward/mean``."""
