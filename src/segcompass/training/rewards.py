"""Rewards for GRPO on the reasoning path (paper §3.3, §4.1 and appendix B.3).

reward = 0.3 · format score + 0.7 · mask score

* :func:`format_reward_score` scores one response in {0.0, 0.9, 1.0} with the rules of appendix B.3.
* :func:`mask_reward_score` scores the predicted slot masks of one response against the ground truth: soft IoU for
  one object, Hungarian-matched mean soft IoU over the confident slots for several (with the empty-side rules).
* :func:`combined_reward_score` is the weighted sum.
* :class:`FormatReward`, :class:`MaskReward` and :class:`SegmentationReward` (with the default instances
  :data:`format_reward`, :data:`mask_reward`, :data:`segmentation_reward`) adapt them to TRL's reward-function
  convention ``reward_func(prompts=..., completions=..., completion_ids=..., **columns) -> list[float | None]``.
  TRL logs each under its ``__name__`` (``rewards/format_reward/mean`` ...). Either pass
  ``reward_funcs=[format_reward, mask_reward], reward_weights=[0.3, 0.7]`` (TRL also logs each part), or
  ``reward_funcs=[segmentation_reward]``; with TRL's default ``multi_objective_aggregation="sum_then_normalize"``
  both give the same advantages.

"Soft IoU" everywhere is ``Σ p·g / (Σ p + Σ g − Σ p·g)`` over pixels, with ``p`` the predicted probabilities and
``g`` the (possibly soft) ground truth; two all-zero maps score 1. See :mod:`segcompass.training.matching`.

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

import numpy as np
import torch

from ..utils.logging import get_logger
from ..utils.masks import decode_rle, is_rle
from .losses import resize_masks
from .matching import hungarian_match, pairwise_soft_iou

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

DEFAULT_EOS_MARKERS: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>", "<pad>")
"""End-of-sequence / padding strings that a decode with ``skip_special_tokens=False`` leaves at the end of a
response (Qwen2.5: ``<|im_end|>``, ``<|endoftext|>``; Llama-2/Vicuna (LLaVA-1.5): ``</s>``; Llama-3: ``<|eot_id|>``).
They are stripped from the end before the format check, so they never count as text after the reference token."""

_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"


# ----------------------------------------------------------------------------------------------- format
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


def format_reward_score(
    text: str,
    *,
    ref_token: str = "<REF_POS>",
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
        >>> format_reward_score("<think>the red mug</think><REF_POS>")
        1.0
        >>> format_reward_score("Sure. <think>the red mug</think><REF_POS>")
        0.9
        >>> format_reward_score("<think>the red mug</think>")
        0.0
    """
    if not isinstance(text, str):
        raise ValueError(f"format_reward_score expects the response text as a str, got {type(text).__name__}.")
    if not ref_token:
        raise ValueError("`ref_token` must be a non-empty string such as '<REF_POS>'.")
    text = _strip_trailing_markers(text, eos_markers)
    # Hard rules: any violation is 0.0.
    if text.count(_THINK_OPEN) != 1 or text.count(_THINK_CLOSE) != 1:
        return 0.0
    open_at = text.index(_THINK_OPEN)
    close_at = text.index(_THINK_CLOSE)
    if close_at < open_at:
        return 0.0
    content = text[open_at + len(_THINK_OPEN) : close_at]
    if not content.strip():
        return 0.0
    think_end = close_at + len(_THINK_CLOSE)
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


# ----------------------------------------------------------------------------------------------- mask
def _as_float_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().float()
    try:
        return torch.as_tensor(np.asarray(x, dtype=np.float32))
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{name}` must be a tensor, numpy array or nested list of numbers: {err}") from err


def _check_unit_range(x: torch.Tensor, name: str, fix: str) -> None:
    if x.numel() == 0:
        return
    low, high = torch.aminmax(x)
    if bool(torch.isnan(low)) or bool(low < 0) or bool(high > 1):
        raise ValueError(f"`{name}` must hold values in [0, 1], got [{float(low):g}, {float(high):g}]. {fix}")


def mask_reward_score(
    pred_probs: torch.Tensor | np.ndarray,
    confidences: torch.Tensor | np.ndarray | Sequence[float] | None,
    gt_masks: torch.Tensor | np.ndarray,
    *,
    confidence_threshold: float = 0.5,
    multi_object: bool | None = None,
    denominator: Literal["matched", "max"] = "matched",
) -> float:
    """Mask score of one response in ``[0, 1]`` (paper appendix B.3).

    * Single object (auto when K = 1 and G = 1, or ``multi_object=False``): soft IoU of the probability mask with
      the ground truth; no matching, confidences unused. With ``multi_object=False`` and K > 1 the most confident
      slot is scored (slot 0 when ``confidences`` is None); G = 0 is scored against an empty mask.
    * Multi object (otherwise): keep the slots with confidence ≥ ``confidence_threshold`` (all slots when
      ``confidences`` is None), K' of them. K' = 0 and G = 0 → 1.0; exactly one of them 0 → 0.0. Else solve the
      Hungarian assignment maximising the total soft IoU of the (K', G) matrix and return
      Σ matched IoU / min(K', G) (``denominator="matched"``, paper) or / max(K', G) (``"max"``, authors' code).

    Args:
        pred_probs (`(K, H, W)` or `(H, W)`): slot mask probabilities in ``[0, 1]``.
        confidences (`(K,)` or None): slot confidence probabilities in ``[0, 1]`` (apply sigmoid to logits).
        gt_masks (`(G, H, W)` or `(H, W)`): ground truth in ``[0, 1]`` on the prediction grid; G may be 0.
        confidence_threshold: keep threshold on the confidence probability.
        multi_object: force the single- (False) or multi-object (True) rule; None chooses as above.
        denominator: ``"matched"`` or ``"max"``.

    Example:
        >>> p = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])    # one slot covering the top row
        >>> g = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])    # one instance: the top-left pixel
        >>> mask_reward_score(p, None, g)
        0.5
    """
    if denominator not in ("matched", "max"):
        raise ValueError(f"`denominator` must be 'matched' or 'max', got {denominator!r}.")
    if not 0.0 <= confidence_threshold <= 1.0:
        raise ValueError(
            f"`confidence_threshold` is a probability threshold in [0, 1], got {confidence_threshold}. "
            "(The authors' code compared logits with 0.5; the equivalent probability threshold is "
            "sigmoid(0.5) ≈ 0.622.)"
        )
    pred = _as_float_tensor(pred_probs, "pred_probs")
    if pred.dim() == 2:
        pred = pred.unsqueeze(0)  # (1, H, W)
    if pred.dim() != 3:
        raise ValueError(f"`pred_probs` must have shape (K, H, W) or (H, W), got {tuple(pred.shape)}.")
    _check_unit_range(pred, "pred_probs", "Pass probabilities (sigmoid of the mask logits), not logits.")
    num_slots = pred.shape[0]
    gt = _as_float_tensor(gt_masks, "gt_masks").to(pred.device)
    if gt.dim() == 2:
        gt = gt.unsqueeze(0)  # (1, H, W)
    if gt.dim() != 3:
        raise ValueError(f"`gt_masks` must have shape (G, H, W) or (H, W), got {tuple(gt.shape)}.")
    if gt.shape[-2:] != pred.shape[-2:]:
        raise ValueError(
            f"`gt_masks` has spatial size {tuple(gt.shape[-2:])} but `pred_probs` is {tuple(pred.shape[-2:])}. "
            "Resize the ground truth to the prediction grid (segcompass.training.resize_masks); the TRL adapter "
            "mask_reward does this for you."
        )
    _check_unit_range(
        gt, "gt_masks", "Ground truth must be binary or soft masks; convert 0/255 images with `mask != 0`."
    )
    num_gt = gt.shape[0]
    conf: torch.Tensor | None = None
    if confidences is not None:
        conf = _as_float_tensor(confidences, "confidences").reshape(-1).to(pred.device)  # (K,)
        if conf.numel() != num_slots:
            raise ValueError(f"`confidences` has {conf.numel()} values but `pred_probs` has K = {num_slots} slots.")
        _check_unit_range(conf, "confidences", "Pass probabilities: apply sigmoid to confidence logits.")

    single = multi_object is False or (multi_object is None and num_slots == 1 and num_gt == 1)
    if single:
        if num_gt > 1:
            raise ValueError(
                f"`multi_object=False` needs at most one ground-truth mask, got G = {num_gt}. Use multi_object=True "
                "(or None) for multi-instance samples."
            )
        slot = int(conf.argmax()) if (conf is not None and num_slots > 1) else 0
        target = gt[:1] if num_gt == 1 else torch.zeros_like(pred[:1])  # (1, H, W)
        return float(pairwise_soft_iou(pred[slot : slot + 1], target)[0, 0])

    kept = pred if conf is None else pred[conf >= confidence_threshold]  # (K', H, W)
    num_kept = kept.shape[0]
    if num_kept == 0 and num_gt == 0:
        return 1.0
    if num_kept == 0 or num_gt == 0:
        return 0.0
    iou = pairwise_soft_iou(kept, gt)  # (K', G)
    rows, cols = hungarian_match(iou)
    total = float(iou.cpu()[rows, cols].sum())
    count = len(rows) if denominator == "matched" else max(num_kept, num_gt)
    return total / count


def combined_reward_score(
    format_score: float, mask_score: float, *, format_weight: float = 0.3, mask_weight: float = 0.7
) -> float:
    """``format_weight · format_score + mask_weight · mask_score`` (paper: 0.3 and 0.7).

    Example:
        >>> round(combined_reward_score(0.9, 0.5), 6)
        0.62
    """
    return format_weight * format_score + mask_weight * mask_score


# ----------------------------------------------------------------------------------------------- TRL adapters
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
            return "".join(
                part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
            )
        raise ValueError(
            f"Unsupported message content of type {type(content).__name__}; expected str or a list of parts."
        )
    raise ValueError(
        f"A completion must be a str or a chat list of messages, got {type(completion).__name__}."
    )


def _rle_key(gt: Any) -> tuple | None:
    """Hashable identity of a ground truth given as RLE dict(s), so repeated rows are decoded once per call."""
    items = [gt] if is_rle(gt) else gt
    if not isinstance(items, (list, tuple)) or not items or not all(is_rle(x) for x in items):
        return None
    try:
        return tuple((tuple(int(s) for s in x["size"]), x["counts"] if isinstance(x["counts"], (str, bytes))
                      else tuple(x["counts"])) for x in items)
    except TypeError:
        return None


def _binary_float(array: np.ndarray, where: str) -> np.ndarray:
    """bool → float; integers → nonzero is foreground; floats must be in [0, 1] (soft masks kept soft)."""
    if array.dtype == bool:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        return (array != 0).astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        if array.size and (np.isnan(array).any() or array.min() < 0 or array.max() > 1):
            raise ValueError(
                f"{where}: float ground-truth masks must lie in [0, 1], got "
                f"[{np.nanmin(array):g}, {np.nanmax(array):g}]."
            )
        return array.astype(np.float32)
    raise ValueError(f"{where}: unsupported ground-truth mask dtype {array.dtype}.")


def _gt_to_array(gt: Any, where: str) -> np.ndarray | None:
    """Read one row's ground truth into a float32 ``(G, H0, W0)`` array at its stored resolution.

    Accepted: a tensor/array ``(G, H, W)`` or ``(H, W)``; a nested list ``(H, W)`` or ``(G, H, W)``; one COCO RLE
    dict; a list of RLE dicts and/or 2-D masks. An empty list means G = 0 and gives ``None`` here (the caller
    builds ``(0, h, w)`` on the prediction grid).
    """
    if isinstance(gt, torch.Tensor):
        gt = gt.detach().cpu()
        gt = gt.float().numpy() if gt.dtype in (torch.bfloat16, torch.float16) else gt.numpy()
    if is_rle(gt):
        return decode_rle(gt)[None].astype(np.float32)  # (1, H0, W0)
    if isinstance(gt, (list, tuple)):
        if len(gt) == 0:
            return None
        if any(is_rle(x) for x in gt) or any(isinstance(x, (np.ndarray, torch.Tensor)) for x in gt):
            planes = []
            for j, item in enumerate(gt):
                if is_rle(item):
                    planes.append(decode_rle(item).astype(np.float32))
                else:
                    plane = _gt_to_array(item, f"{where}[{j}]")
                    if plane is None or plane.shape[0] != 1:
                        raise ValueError(f"{where}[{j}] must be one 2-D mask or an RLE dict.")
                    planes.append(plane[0])
            if len({p.shape for p in planes}) != 1:
                raise ValueError(
                    f"{where}: the instance masks have different sizes {[p.shape for p in planes]}; all instances of "
                    "one sample must share the image size."
                )
            return np.stack(planes)  # (G, H0, W0)
        try:
            gt = np.asarray(gt)
        except ValueError as err:
            raise ValueError(f"{where}: nested-list masks must be rectangular: {err}") from err
    if isinstance(gt, np.ndarray):
        if gt.ndim == 2:
            gt = gt[None]  # (1, H0, W0)
        if gt.ndim != 3:
            raise ValueError(f"{where}: ground-truth masks must be (G, H, W) or (H, W), got shape {gt.shape}.")
        return _binary_float(gt, where)
    raise ValueError(
        f"{where}: cannot read ground-truth masks from {type(gt).__name__}; expected a tensor/array (G, H, W), nested "
        "lists, or COCO RLE dicts {'size', 'counts'}."
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
        ref_token: str = "<REF_POS>",
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
    ``(H, W)`` as soft targets (area averaging, see :func:`resize_masks`). ``gt_layout="letterbox"`` (default)
    assumes the predictions live in SAM's square frame (image scaled so its longest side fits, padded bottom/right);
    ``"stretch"`` assumes the image was resized to ``(H, W)`` without keeping the aspect ratio. Ground truth already
    at ``(H, W)`` is used as is. RLE rows repeated across a prompt's generations are decoded once per call.

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
        cache: dict[tuple, np.ndarray | None] = {}
        out: list[float | None] = []
        for i in range(n):
            pred, gt = pred_masks[i], masks[i]
            if pred is None or gt is None:
                out.append(None)
                continue
            pred_t = _as_float_tensor(pred, f"pred_masks[{i}]")
            if pred_t.dim() == 2:
                pred_t = pred_t.unsqueeze(0)  # (1, H, W)
            if pred_t.dim() != 3:
                raise ValueError(f"pred_masks[{i}] must have shape (K, H, W), got {tuple(pred_t.shape)}.")
            gt_t = self._ground_truth(gt, tuple(pred_t.shape[-2:]), cache, f"masks[{i}]").to(pred_t.device)
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

    def _ground_truth(
        self, gt: Any, size: tuple[int, int], cache: dict[tuple, np.ndarray | None], where: str
    ) -> torch.Tensor:
        """Ground truth of one row as a float32 ``(G, H, W)`` tensor on the prediction grid."""
        key = _rle_key(gt)
        if key is not None and key in cache:
            array = cache[key]
        else:
            array = _gt_to_array(gt, where)
            if key is not None:
                cache[key] = array
        if array is None:
            return torch.zeros(0, *size)  # (0, H, W): no target
        tensor = torch.from_numpy(array)  # (G, H0, W0)
        if tuple(tensor.shape[-2:]) == size:
            return tensor
        return resize_masks(tensor, size, letterbox=self.gt_layout == "letterbox")  # (G, H, W)

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
        ref_token: str = "<REF_POS>",
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
