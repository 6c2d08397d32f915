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

Where the paper leaves a choice open, the choice taken here is the one that ranks completions as the evaluation
does (the paper's and the authors' variants stay available as options):

* Format: exactly one ``<think>`` and one ``</think>`` tag, in that order (a stray or nested tag is invalid);
  the 2048-character limit applies to the raw think content; a documented set of end-of-sequence markers at the end
  of the response is stripped before the "text after the reference token" check. ``max_gap_words`` reproduces
  the authors' extra rule (> 10 words between ``</think>`` and the reference token → 0.9); off by default.
* Mask, which slots count: those whose confidence *probability* is ≥ the model's own
  ``SegCompassConfig.confidence_threshold`` (the tuned value inference and evaluation use, e.g. 0.5 or 0.15), never
  a fixed 0.5. ``MaskReward(confidence_threshold=None)`` (the default) means exactly that: the
  SegCompass GRPO trainer fills it in from ``model.config`` (or from ``SegCompassGRPOConfig.mask_confidence_threshold``
  when set; an explicit ``MaskReward(confidence_threshold=t)`` always wins). Called outside the trainer with
  confidences, an unset threshold is an error rather than a silent 0.5. With the threshold the trainer also fills in
  the model's ``config.duplicate_iou`` (unless the reward set its own ``duplicate_iou``): a kept slot that copies a
  more confident one is dropped, as evaluation drops it.
* Mask, single object: used whenever the *sample* has one target (G = 1), whatever K. "The prediction" is what
  evaluation scores (:func:`segcompass.prediction.keep_and_union`: the union of the kept slots), taken soft: the
  pixelwise maximum of the kept slots' probabilities, whose > 0.5 region is exactly evaluation's union. Its soft IoU
  with the instance is the score, with no matching, so an extra confident slot lowers the reward exactly as it
  lowers gIoU / cIoU, and a completion whose slots are all below the threshold (evaluation: "no target") scores
  0. With K = 1 and no confidences this is the paper's rule literally. ``multi_object=False`` forces it.
* Mask, multi object (G = 0 or G ≥ 2): the paper's empty-side rules (nothing kept and no target → 1, exactly one
  side empty → 0), then ``multi_object_rule``:

  - ``"union"`` (default): soft IoU of the soft union of the kept slots with the union of the instances, the soft
    form of the sample's gIoU (IoU of the unions). It ranks like gIoU and cIoU because it *is* their per-sample
    quantity: spurious pixels from an extra confident slot and a missed instance lower it in proportion to their
    area, and a duplicate slot on a covered instance costs nothing (the metric does not change either).
  - ``"max"`` (the authors' code): Hungarian-matched soft IoU / max(K', G). Penalises unmatched slots and
    instances, but by a whole share each, whatever their area, so it can rank a tiny spurious slot below a badly
    shifted mask where gIoU ranks it above.
  - ``"matched"`` (appendix B.3 literally): mean soft IoU over the matched pairs; extra confident slots and
    missed instances cost nothing, unlike in every metric. (``denominator="max"`` / ``"matched"`` are accepted as
    the older spelling of the last two.)
* The paper's §4.1 also mentions "a binary confidence score (1 if matched, 0 otherwise)" for multi-object data
  but appendix B.3, which defines the score, has no such term; it is not added.
* Known difference: the reward is computed on SAM's letterboxed mask grid, padding included; evaluation crops the
  padding away. A prediction leaking into the padding costs reward but no metric.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, Literal

from ..answer_format import DEFAULT_EOS_MARKERS, DEFAULT_REF_TOKEN, format_score
from ..prediction import check_duplicate_iou
from ..utils.logging import get_logger
from .reward_scores import (
    MultiObjectRule,
    combined_reward_score,
    mask_reward_score,
    mask_stack,
    resolve_multi_object_rule,
)
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
    "resolve_reward_threshold",
    "segmentation_reward",
]

format_reward_score = format_score
"""Alias of :func:`segcompass.answer_format.format_score` (the format rule lives with the answer format).
:func:`mask_reward_score` and :func:`combined_reward_score` live in :mod:`.reward_scores` and are importable here."""


# ----------------------------------------------------------------------------------------------- TRL adapters
def _check_threshold(threshold: Any) -> float | None:
    """None, or a probability in [0, 1] as a float; anything else is a ValueError naming it."""
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(
            f"`confidence_threshold` must be None (the model's config.confidence_threshold) or a probability in "
            f"[0, 1], got {threshold!r}."
        )
    return float(threshold)


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
    * ``pred_instance_limits`` (optional): one ``max_instances`` (int or None) per completion, the model's
      ``outputs.instance_limits`` under ``config.limit_instances_to_answer`` (the trainer passes them); missing or
      None → no limit.
    * ``masks``: the dataset's ground truth per row, in any form the datasets give: the SegCompass schema's list of
      COCO RLE dicts (``[]`` for no target), tensors/arrays ``(G, H, W)`` or ``(H, W)``, nested lists. Integer
      masks read nonzero as foreground; float masks must lie in ``[0, 1]``.

    The ground truth is stored at the original image resolution; it is resized here to the prediction grid
    ``(H, W)`` as soft targets (area averaging) by :func:`segcompass.training.targets.masks_on_grid`, the package's
    one ground-truth reader. ``gt_layout="letterbox"`` (default) assumes the predictions live in SAM's square frame
    (image scaled so its longest side fits, padded bottom/right); ``"stretch"`` assumes the image was resized to
    ``(H, W)`` without keeping the aspect ratio. Ground truth already at ``(H, W)`` is used as is. RLE rows repeated
    across a prompt's generations are decoded once per call.

    ``confidence_threshold`` None (default) means the model's ``config.confidence_threshold``: the SegCompass GRPO
    trainer replaces this object by ``with_threshold(threshold)`` (a copy). ``multi_object`` and
    ``multi_object_rule`` (``"union"`` default, ``"max"``, ``"matched"``; ``denominator`` is the older spelling of
    the last two) are those of :func:`mask_reward_score`; see the module docstring for why ``"union"``.

    Returns None for a row (TRL: NaN, left out of the mean; a row whose every reward is None gets advantage 0) only
    when the reward cannot be computed: its ``pred_masks`` entry is None (no masks were decoded for that
    completion) or its ``masks`` entry is None (the row has no annotation, as opposed to ``[]``, no target). A
    completion with a malformed format still gets a mask score.
    """

    def __init__(
        self,
        *,
        confidence_threshold: float | None = None,
        multi_object: bool | None = None,
        multi_object_rule: MultiObjectRule | None = None,
        denominator: Literal["matched", "max"] | None = None,
        gt_layout: Literal["letterbox", "stretch"] = "letterbox",
        name: str = "mask_reward",
        duplicate_iou: float | None = None,
    ) -> None:
        if gt_layout not in ("letterbox", "stretch"):
            raise ValueError(f"`gt_layout` must be 'letterbox' or 'stretch', got {gt_layout!r}.")
        self.multi_object_rule = resolve_multi_object_rule(multi_object_rule, denominator)
        self.confidence_threshold = _check_threshold(confidence_threshold)
        self.duplicate_iou = check_duplicate_iou(duplicate_iou)
        self.multi_object = multi_object
        self.gt_layout = gt_layout
        self.__name__ = name

    def with_threshold(self, threshold: float, duplicate_iou: float | None = None) -> MaskReward:
        """This reward with the model's prediction rule when it has no threshold of its own
        (``confidence_threshold=None``, the default: "the model's"): ``threshold`` as its keep threshold and, unless
        it set one, ``duplicate_iou``. An explicit threshold wins and ``self`` is returned. Otherwise a copy (the
        module's default instances are never changed). The GRPO trainer calls it with the model's
        ``config.confidence_threshold`` and ``config.duplicate_iou``."""
        if self.confidence_threshold is not None:
            return self
        resolved = copy.copy(self)
        resolved.confidence_threshold = _check_threshold(threshold)
        if resolved.duplicate_iou is None:
            resolved.duplicate_iou = check_duplicate_iou(duplicate_iou)
        return resolved

    def scores(
        self,
        completions: Sequence[Any],
        pred_masks: Sequence[Any] | None,
        pred_confidences: Sequence[Any] | None,
        masks: Sequence[Any] | None,
        pred_instance_limits: Sequence[int | None] | None = None,
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
        if pred_instance_limits is not None:
            _check_column(pred_instance_limits, "pred_instance_limits")
            lengths["pred_instance_limits"] = len(pred_instance_limits)
        wrong = {k: v for k, v in lengths.items() if v != n}
        if wrong:
            raise ValueError(f"Expected one entry per completion ({n}) in every column, got lengths {wrong}.")

        if self.confidence_threshold is None and pred_confidences is not None and any(
            c is not None for c in pred_confidences
        ):
            raise ValueError(
                f"{self.__name__} has no confidence threshold (confidence_threshold=None means the model's "
                "config.confidence_threshold, which SegCompassGRPOTrainer fills in). Outside the trainer give it "
                "one: construct it with confidence_threshold=model.config.confidence_threshold, or call "
                f"{self.__name__}.with_threshold(model.config.confidence_threshold)."
            )
        if pred_confidences is None:
            logger.warning_once(
                f"{self.__name__}: no `pred_confidences` given, so every predicted slot counts as kept in the "
                "mask score. Pass the slot confidence probabilities to apply the confidence threshold."
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
                    confidence_threshold=0.5 if self.confidence_threshold is None else self.confidence_threshold,
                    multi_object=self.multi_object,
                    multi_object_rule=self.multi_object_rule,
                    duplicate_iou=self.duplicate_iou,
                    max_instances=None if pred_instance_limits is None else pred_instance_limits[i],
                )
            )
        return out

    def __call__(
        self,
        completions: Sequence[Any],
        pred_masks: Sequence[Any] | None = None,
        pred_confidences: Sequence[Any] | None = None,
        masks: Sequence[Any] | None = None,
        pred_instance_limits: Sequence[int | None] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        return self.scores(completions, pred_masks, pred_confidences, masks, pred_instance_limits)

    def __repr__(self) -> str:
        return (
            f"MaskReward(name={self.__name__!r}, confidence_threshold={self.confidence_threshold}, "
            f"multi_object={self.multi_object}, multi_object_rule={self.multi_object_rule!r}, "
            f"gt_layout={self.gt_layout!r}, duplicate_iou={self.duplicate_iou})"
        )


class SegmentationReward:
    """TRL reward function: ``format_weight · format + mask_weight · mask`` per completion (paper: 0.3 / 0.7).

    Takes the same keyword arguments as :class:`MaskReward` (``confidence_threshold`` None = the model's, filled in
    by the GRPO trainer through :meth:`with_threshold`); returns None where the mask score is None (see
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
        confidence_threshold: float | None = None,
        multi_object: bool | None = None,
        multi_object_rule: MultiObjectRule | None = None,
        denominator: Literal["matched", "max"] | None = None,
        gt_layout: Literal["letterbox", "stretch"] = "letterbox",
        name: str = "segmentation_reward",
        duplicate_iou: float | None = None,
    ) -> None:
        self.format_weight = format_weight
        self.mask_weight = mask_weight
        self.format = FormatReward(
            ref_token=ref_token, think_max_chars=think_max_chars, eos_markers=eos_markers, max_gap_words=max_gap_words
        )
        self.mask = MaskReward(
            confidence_threshold=confidence_threshold,
            multi_object=multi_object,
            multi_object_rule=multi_object_rule,
            denominator=denominator,
            gt_layout=gt_layout,
            name=name,
            duplicate_iou=duplicate_iou,
        )
        self.__name__ = name

    @property
    def confidence_threshold(self) -> float | None:
        """The keep threshold of the mask part (None: the model's, filled in by the GRPO trainer)."""
        return self.mask.confidence_threshold

    def with_threshold(self, threshold: float, duplicate_iou: float | None = None) -> SegmentationReward:
        """As :meth:`MaskReward.with_threshold`: ``self`` when the threshold is set, else a copy with the model's
        rule."""
        if self.mask.confidence_threshold is not None:
            return self
        resolved = copy.copy(self)
        resolved.mask = self.mask.with_threshold(threshold, duplicate_iou)
        return resolved

    def __call__(
        self,
        completions: Sequence[Any],
        pred_masks: Sequence[Any] | None = None,
        pred_confidences: Sequence[Any] | None = None,
        masks: Sequence[Any] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        pred_instance_limits: Sequence[int | None] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        formats = self.format(completions)
        mask_scores = self.mask.scores(completions, pred_masks, pred_confidences, masks, pred_instance_limits)
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


def resolve_reward_threshold(reward_func: Any, threshold: float | None, duplicate_iou: float | None = None) -> Any:
    """``reward_func.with_threshold(threshold, duplicate_iou)`` for a :class:`MaskReward` / :class:`SegmentationReward`
    without its own keep threshold, else ``reward_func`` itself (other reward functions, explicit thresholds,
    ``threshold`` None). The GRPO trainer passes every reward function through it with the model's threshold and
    duplicate rule."""
    if threshold is None or not isinstance(reward_func, (MaskReward, SegmentationReward)):
        return reward_func
    return reward_func.with_threshold(threshold, duplicate_iou)


format_reward = FormatReward()
"""Default :class:`FormatReward` (paper settings), logged by TRL as ``rewards/format_reward/mean``."""

mask_reward = MaskReward()
"""Default :class:`MaskReward` (union rule, the model's threshold once the GRPO trainer resolves it), logged by TRL as
``rewards/mask_reward/mean``."""

segmentation_reward = SegmentationReward()
"""Default :class:`SegmentationReward` (0.3 · format + 0.7 · mask), logged as ``rewards/segmentation_reward/mean``."""
