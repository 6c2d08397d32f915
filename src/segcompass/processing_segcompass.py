"""SegCompassProcessor: prompt template, special tokens, backbone + SAM image processing, mask post-processing.

One processor prepares everything a SegCompass model needs for one (image, instruction) pair:

- the **backbone inputs** (``input_ids``, ``attention_mask``, ``pixel_values`` and, for Qwen2.5-VL,
  ``image_grid_thw`` / ``mm_token_type_ids``), produced by the backbone's own processor: an image-only
  ``Qwen2_5_VLProcessor`` subclass (the stock class needs torchvision for its video processor) or ``LlavaProcessor``,
  both with ``*Pil`` image processors;
- the **SAM inputs** (``sam_pixel_values``: longest side resized to S, padded to S x S) from ``SamImageProcessorPil``,
  with ``original_sizes`` and ``reshaped_input_sizes`` for post-processing;
- the **prompt**: the instruction inside :data:`DEFAULT_PROMPT_TEMPLATE`, which asks for the reasoning inside
  ``<think> </think>`` followed by exactly one ``<REF_POS>``, rendered with the chat template (image first, then text);
- the **concentration tokens** ``<SLOT_0> ... <SLOT_{K-1}>``: appended after the answer (teacher-forced, never
  sampled) so their last hidden states become the K slot embeddings (design decision 2).

The tokenizer must contain ``<REF_POS>`` and the K slot tokens as special tokens;
:func:`add_special_tokens_to_tokenizer` adds them, after which the model's embedding matrix must have at least
``len(tokenizer)`` rows (Qwen2.5-VL and llava-1.5-hf already carry spare padded rows; otherwise
``model.resize_token_embeddings(len(tokenizer))``; never shrink a padded matrix to ``len(tokenizer)``).
Generation uses **left padding**: the processor sets ``tokenizer.padding_side = "left"`` (a per-call
``padding_side`` overrides it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from transformers import (
    BatchFeature,
    LlavaProcessor,
    ProcessorMixin,
    Qwen2_5_VLProcessor,
    SamImageProcessorPil,
)

from .image_utils import load_image
from .utils.logging import get_logger

logger = get_logger(__name__)

__all__ = [
    "BACKBONE_TYPES",
    "DEFAULT_NUM_SLOTS",
    "DEFAULT_PROMPT_TEMPLATE",
    "DEFAULT_REF_TOKEN",
    "DEFAULT_SLOT_TOKEN_TEMPLATE",
    "ImageOnlyQwen2_5_VLProcessor",
    "SegCompassProcessor",
    "SlotAppendOutput",
    "add_special_tokens_to_tokenizer",
    "extract_reasoning",
    "slot_token_strings",
]

DEFAULT_REF_TOKEN = "<REF_POS>"
DEFAULT_SLOT_TOKEN_TEMPLATE = "<SLOT_{}>"
DEFAULT_NUM_SLOTS = 6
BACKBONE_TYPES = ("qwen2_5_vl", "llava")

DEFAULT_PROMPT_TEMPLATE = (
    "Request: {instruction}\n"
    "Find the object(s) in the image that the request refers to, comparing the candidates carefully. "
    "Reason step by step inside <think> </think>, then output exactly one <REF_POS> right after </think> "
    "and nothing else."
)
"""The instruction template (``{instruction}`` is replaced by the stripped instruction). One instruction, no
contradictions: reasoning in ``<think> </think>``, then exactly one ``<REF_POS>`` (what the format reward checks).
Used for both backbones."""

LLAVA_DEFAULT_BACKBONE_KWARGS = {
    "patch_size": 14,
    "vision_feature_select_strategy": "default",
    "num_additional_image_tokens": 1,
    "image_token": "<image>",
}
"""``LlavaProcessor`` arguments of llava-1.5 (CLIP ViT-L/14 at 336 px, CLS dropped: 576 image tokens)."""

_BACKBONE_KWARG_NAMES = {"qwen2_5_vl": (), "llava": tuple(LLAVA_DEFAULT_BACKBONE_KWARGS)}
_THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_INSTRUCTION_FIELD = "{instruction}"


def slot_token_strings(num_slots: int = DEFAULT_NUM_SLOTS, template: str = DEFAULT_SLOT_TOKEN_TEMPLATE) -> list[str]:
    """The K concentration-token strings, e.g. ``["<SLOT_0>", ..., "<SLOT_5>"]``."""
    _check_num_slots(num_slots)
    if template.count("{}") != 1:
        raise ValueError(
            f"slot_token_template must contain '{{}}' exactly once (e.g. '<SLOT_{{}}>'), got {template!r}."
        )
    return [template.format(k) for k in range(num_slots)]


def add_special_tokens_to_tokenizer(
    tokenizer,
    num_slots: int = DEFAULT_NUM_SLOTS,
    ref_token: str = DEFAULT_REF_TOKEN,
    slot_token_template: str = DEFAULT_SLOT_TOKEN_TEMPLATE,
) -> int:
    """Add ``<REF_POS>`` and ``<SLOT_0> ... <SLOT_{K-1}>`` to ``tokenizer`` as extra special tokens (in place).

    Tokens already present are left alone, so the call is idempotent and ids never move; new tokens get consecutive
    ids at the end of the vocabulary, ``<REF_POS>`` first.

    Returns:
        ``int``: how many new ids were added. When it is > 0 the model's embedding matrix needs at least
        ``len(tokenizer)`` rows: grow it with ``model.resize_token_embeddings(len(tokenizer))`` when it is smaller
        (Qwen2.5-VL and llava-1.5-hf have spare padded rows, so theirs already fit; resizing them *down* to
        ``len(tokenizer)`` would drop rows). Either way the new rows hold no trained meaning yet.
    """
    wanted = [ref_token, *slot_token_strings(num_slots, slot_token_template)]
    # A token may already be an ordinary vocabulary entry; registering it as a special token keeps its id and makes
    # sure it is never split or merged with neighbouring text.
    to_register = [token for token in wanted if token not in tokenizer.added_tokens_encoder]
    if not to_register:
        return 0
    size_before = len(tokenizer)
    tokenizer.add_special_tokens({"extra_special_tokens": to_register}, replace_extra_special_tokens=False)
    added = len(tokenizer) - size_before
    logger.info(
        f"Registered {', '.join(to_register)} as special tokens ({added} new ids); the model's embedding matrix needs "
        f"at least {len(tokenizer)} rows."
    )
    return added


def extract_reasoning(text: str) -> str:
    """The content of the last complete ``<think> ... </think>`` block of ``text``, stripped; ``""`` if there is none
    (an unclosed ``<think>`` counts as none).

    The last block, so that a decoded prompt + answer works too: the prompt template itself mentions
    ``<think> </think>``. A well-formed answer has exactly one block (the format reward checks that)."""
    blocks = _THINK_BLOCK.findall(text)
    return blocks[-1].strip() if blocks else ""


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without the video processor (which needs torchvision); images and text only.

    Its attributes are ``["image_processor", "tokenizer"]`` (derived from this ``__init__`` signature), so it saves and
    loads without a video processor.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **kwargs,
        )
        # Image-only: no video placeholder exists, so none is counted or typed (a tokenizer without the video token
        # would otherwise map it to the unknown-token id and mark every unknown word as video).
        self.video_token = None
        self.video_token_id = None


class SlotAppendOutput(NamedTuple):
    """Result of :meth:`SegCompassProcessor.append_slot_tokens` (unpacks like a tuple)."""

    input_ids: torch.Tensor
    """``(B, T')`` the sequences with ``[<REF_POS>] <SLOT_0> ... <SLOT_{K-1}>`` after each row's last valid token."""
    attention_mask: torch.Tensor
    """``(B, T')`` 1 on every original valid token and on the appended tokens, 0 on padding."""
    slot_positions: torch.Tensor
    """``(B, K)`` long: column of ``<SLOT_k>`` in each row of ``input_ids``."""
    missing_ref_pos: torch.Tensor
    """``(B,)`` bool: rows whose answer had no ``<REF_POS>`` (one was inserted before the slots): malformed answers."""
    mm_token_type_ids: torch.Tensor | None = None
    """``(B, T')`` the given ``mm_token_type_ids`` moved along, 0 (text) on the appended tokens; ``None`` if not
    given."""


class SegCompassProcessor(ProcessorMixin):
    r"""Processor of SegCompass models: backbone processor + SAM image processor + prompt template + special tokens.

    Args:
        image_processor: the backbone's image processor: ``Qwen2VLImageProcessorPil`` (Qwen2.5-VL) or
            ``CLIPImageProcessorPil`` (LLaVA-1.5).
        tokenizer: the backbone's tokenizer, already holding ``ref_token`` and the slot tokens
            (:func:`add_special_tokens_to_tokenizer`). Its ``padding_side`` is set to ``"left"``.
        sam_image_processor: ``SamImageProcessorPil`` (resize longest side to S, pad to S x S; padding must be on).
            Default: ``SamImageProcessorPil()`` (S = 1024, as SAM).
        chat_template: Jinja chat template; default: the tokenizer's. It must render ``{"type": "image"}`` content
            parts as the backbone's image placeholder.
        backbone_type: ``"qwen2_5_vl"`` or ``"llava"``.
        num_slots: K, the number of concentration tokens / mask slots.
        ref_token: the reference token the model ends its answer with.
        slot_token_template: format string of the slot tokens (``"<SLOT_{}>"``).
        prompt_template: text of the user turn; must contain ``{instruction}`` exactly once.
        system_prompt: optional system message (``None``: none is sent, so the chat template's default applies).
        max_length: the longest instruction, in tokens; ``None`` uses ``tokenizer.model_max_length`` when finite.
        backbone_kwargs: arguments of the inner backbone processor. Qwen2.5-VL: none. LLaVA: ``patch_size``,
            ``vision_feature_select_strategy``, ``num_additional_image_tokens``, ``image_token`` (defaults:
            :data:`LLAVA_DEFAULT_BACKBONE_KWARGS`, the llava-1.5 values). A plain dict, so it survives
            ``save_pretrained``.

    Example:

    ```python
    processor = SegCompassProcessor.from_pretrained("path/to/segcompass")
    inputs = processor(image, "the mug closest to the sink")          # generation prompt, left-padded
    names = processor.backbone_processor.model_input_names
    sequences = backbone.generate(**{k: v for k, v in inputs.items() if k in names}, max_new_tokens=512)
    answer = processor.batch_decode(sequences[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    reasoning = processor.extract_reasoning(answer)
    slotted = processor.append_slot_tokens(sequences, prompt_length=inputs["input_ids"].shape[1])
    # slotted.input_ids / .attention_mask / .slot_positions (B, K) / .missing_ref_pos (B,) -> one forward pass
    masks = processor.post_process_masks(mask_logits, inputs["original_sizes"], inputs["reshaped_input_sizes"])
    ```

    Training / scoring with known answers (teacher forcing), slots included::

        batch = processor(images, instructions, completions=answers, append_slots=True)
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        sam_image_processor=None,
        chat_template=None,
        backbone_type: str = "qwen2_5_vl",
        num_slots: int = DEFAULT_NUM_SLOTS,
        ref_token: str = DEFAULT_REF_TOKEN,
        slot_token_template: str = DEFAULT_SLOT_TOKEN_TEMPLATE,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        system_prompt: str | None = None,
        max_length: int | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
    ):
        if backbone_type not in BACKBONE_TYPES:
            raise ValueError(f"backbone_type must be one of {BACKBONE_TYPES}, got {backbone_type!r}.")
        if image_processor is None or tokenizer is None:
            raise ValueError(
                "SegCompassProcessor needs the backbone's image_processor and tokenizer (got None); build them from "
                "the backbone checkpoint, or use SegCompassProcessor.from_backbone_pretrained(path, backbone_type)."
            )
        _check_num_slots(num_slots)
        if not isinstance(prompt_template, str) or prompt_template.count(_INSTRUCTION_FIELD) != 1:
            raise ValueError(
                f"prompt_template must contain '{_INSTRUCTION_FIELD}' exactly once, got {prompt_template!r}."
            )
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
        ):
            raise ValueError(f"max_length must be a positive int or None, got {max_length!r}.")
        slot_tokens = slot_token_strings(num_slots, slot_token_template)
        if ref_token in slot_tokens:
            raise ValueError(
                f"ref_token {ref_token!r} collides with a slot token; choose a different slot_token_template."
            )
        backbone_kwargs = _resolve_backbone_kwargs(backbone_type, backbone_kwargs)
        sam_image_processor = SamImageProcessorPil() if sam_image_processor is None else sam_image_processor
        _check_sam_image_processor(sam_image_processor)
        if chat_template is None:
            chat_template = getattr(tokenizer, "chat_template", None)

        self.backbone_type = backbone_type
        self.num_slots = num_slots
        self.ref_token = ref_token
        self.slot_token_template = slot_token_template
        self.prompt_template = prompt_template
        self.system_prompt = system_prompt
        self.max_length = max_length
        self.backbone_kwargs = backbone_kwargs
        super().__init__(image_processor, tokenizer, sam_image_processor, chat_template=chat_template)

        self._check_special_tokens()
        self.tokenizer.padding_side = "left"

    # ------------------------------------------------------------------------------------------------------------
    # Construction helpers
    # ------------------------------------------------------------------------------------------------------------

    @classmethod
    def from_backbone_pretrained(
        cls,
        pretrained_model_name_or_path,
        backbone_type: str,
        num_slots: int = DEFAULT_NUM_SLOTS,
        sam_image_processor=None,
        ref_token: str = DEFAULT_REF_TOKEN,
        slot_token_template: str = DEFAULT_SLOT_TOKEN_TEMPLATE,
        **kwargs,
    ) -> SegCompassProcessor:
        """Build a processor from a stock backbone checkpoint (e.g. ``Qwen/Qwen2.5-VL-7B-Instruct``, a local copy of
        ``llava-hf/llava-1.5-7b-hf``): loads its tokenizer and (PIL) image processor, adds the SegCompass special
        tokens, and logs a warning with the new vocabulary size when ids were added (the model's embedding matrix
        needs at least that many rows).

        Remaining ``kwargs`` go to the constructor (``prompt_template``, ``system_prompt``, ``backbone_kwargs``, ...).
        """
        from transformers import AutoImageProcessor, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path)
        image_processor = AutoImageProcessor.from_pretrained(pretrained_model_name_or_path, backend="pil")
        added = add_special_tokens_to_tokenizer(tokenizer, num_slots, ref_token, slot_token_template)
        if added:
            logger.warning(
                f"Added {added} SegCompass special tokens to the tokenizer of {pretrained_model_name_or_path}; the "
                f"backbone needs at least {len(tokenizer)} embedding rows (`model.resize_token_embeddings("
                f"{len(tokenizer)})` if it has fewer)."
            )
        return cls(
            image_processor=image_processor,
            tokenizer=tokenizer,
            sam_image_processor=sam_image_processor,
            chat_template=kwargs.pop("chat_template", None) or _processor_chat_template(pretrained_model_name_or_path),
            backbone_type=backbone_type,
            num_slots=num_slots,
            ref_token=ref_token,
            slot_token_template=slot_token_template,
            **kwargs,
        )

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        # Rebuild both image processors from processor_config.json with their PIL classes, so a saved processor
        # loads identically with or without torchvision (and without the "falling back to Pil" warning).
        configs = processor_dict or {}
        if not all(isinstance(configs.get(name), dict) for name in ("image_processor", "sam_image_processor")):
            return super()._get_arguments_from_pretrained(pretrained_model_name_or_path, processor_dict, **kwargs)
        subfolder = kwargs.pop("subfolder", "")
        tokenizer = cls._load_tokenizer_from_pretrained(
            "tokenizer", pretrained_model_name_or_path, subfolder=subfolder, **kwargs
        )
        return [
            _pil_image_processor_from_dict(configs["image_processor"]),
            tokenizer,
            _pil_image_processor_from_dict(configs["sam_image_processor"]),
        ]

    # ------------------------------------------------------------------------------------------------------------
    # Tokens
    # ------------------------------------------------------------------------------------------------------------

    add_special_tokens_to_tokenizer = staticmethod(add_special_tokens_to_tokenizer)
    """Alias of the module-level :func:`add_special_tokens_to_tokenizer`."""

    @property
    def slot_tokens(self) -> list[str]:
        """``["<SLOT_0>", ..., "<SLOT_{K-1}>"]``."""
        return slot_token_strings(self.num_slots, self.slot_token_template)

    @property
    def ref_token_id(self) -> int:
        """Id of ``<REF_POS>``."""
        return self.tokenizer.convert_tokens_to_ids(self.ref_token)

    @property
    def slot_token_ids(self) -> list[int]:
        """Ids of ``<SLOT_0> ... <SLOT_{K-1}>`` (K ints, in slot order)."""
        return self.tokenizer.convert_tokens_to_ids(self.slot_tokens)

    @property
    def backbone_processor(self) -> ProcessorMixin:
        """The backbone's own processor over this processor's tokenizer and image processor (built on access, so it
        always reflects the current attributes): ``ImageOnlyQwen2_5_VLProcessor`` or ``LlavaProcessor``."""
        if self.backbone_type == "qwen2_5_vl":
            return ImageOnlyQwen2_5_VLProcessor(
                image_processor=self.image_processor, tokenizer=self.tokenizer, chat_template=self.chat_template
            )
        return LlavaProcessor(
            image_processor=self.image_processor,
            tokenizer=self.tokenizer,
            chat_template=self.chat_template,
            **self.backbone_kwargs,
        )

    @property
    def image_token(self) -> str:
        """The backbone's image placeholder token (``<|image_pad|>`` for Qwen2.5-VL, ``<image>`` for LLaVA)."""
        return self.backbone_processor.image_token

    @property
    def model_input_names(self) -> list[str]:
        return [*self.backbone_processor.model_input_names, "sam_pixel_values"]

    def _check_special_tokens(self) -> None:
        registered = self.tokenizer.added_tokens_encoder  # special/added tokens: never split, never merged
        for token in (self.ref_token, *self.slot_tokens):
            if token not in registered:
                raise ValueError(
                    f"The tokenizer has no special token {token!r} (SegCompass needs {self.ref_token!r} and "
                    f"{self.num_slots} slot tokens {self.slot_tokens[0]!r}...). Call "
                    f"`segcompass.processing_segcompass.add_special_tokens_to_tokenizer(tokenizer, num_slots="
                    f"{self.num_slots})`, then make sure the model has at least len(tokenizer) embedding rows "
                    "(`model.resize_token_embeddings(len(tokenizer))` if it has fewer)."
                )

    # ------------------------------------------------------------------------------------------------------------
    # Prompt
    # ------------------------------------------------------------------------------------------------------------

    def build_messages(self, instruction: str, image: Any = None) -> list[dict[str, Any]]:
        """The chat messages for ``instruction``: optional system turn, then a user turn with the image part first and
        the filled-in prompt template. ``image`` (optional) is stored in the image part (for ``apply_chat_template``,
        TRL datasets)."""
        image_part: dict[str, Any] = {"type": "image"}
        if image is not None:
            image_part["image"] = image
        prompt = self.prompt_template.replace(_INSTRUCTION_FIELD, instruction.strip())
        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        messages.append({"role": "user", "content": [image_part, {"type": "text", "text": prompt}]})
        return messages

    def render_prompt(self, instruction: str, add_generation_prompt: bool = True) -> str:
        """The prompt string for ``instruction`` (chat template applied, one image placeholder, not yet expanded)."""
        chat_template = self.chat_template or getattr(self.tokenizer, "chat_template", None)
        if not chat_template:
            raise ValueError(
                "Neither the processor nor the tokenizer has a chat template; pass `chat_template=` to "
                "SegCompassProcessor (the backbone checkpoint's chat_template.jinja)."
            )
        text = self.tokenizer.apply_chat_template(
            self.build_messages(instruction),
            chat_template=chat_template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
        placeholders = text.count(self.image_token)
        if placeholders != 1:
            raise ValueError(
                f"The chat template rendered {placeholders} image placeholders ({self.image_token!r}) for one image; "
                "use a chat template that renders each {'type': 'image'} content part as the backbone's image token."
            )
        return text

    def instruction_length_limit(self) -> int | None:
        """The instruction length limit in tokens: ``max_length`` if set, else the tokenizer's finite
        ``model_max_length``, else ``None``."""
        if self.max_length is not None:
            return self.max_length
        model_max = getattr(self.tokenizer, "model_max_length", None)
        return int(model_max) if model_max is not None and model_max < 1e9 else None

    # ------------------------------------------------------------------------------------------------------------
    # __call__
    # ------------------------------------------------------------------------------------------------------------

    def __call__(
        self,
        images=None,
        instructions: str | Sequence[str] | None = None,
        completions: str | Sequence[str] | None = None,
        *,
        text: str | Sequence[str] | None = None,
        add_generation_prompt: bool = True,
        append_slots: bool = False,
        padding: bool | str = True,
        padding_side: str | None = None,
        return_tensors: str | None = "pt",
        videos=None,
        audio=None,
        **kwargs,
    ) -> BatchFeature:
        """Prepare a batch of (image, instruction[, completion]) samples.

        Args:
            images: one image or a list (anything :func:`~segcompass.image_utils.load_image` accepts). One image is
                broadcast to every instruction; otherwise there must be one image per instruction.
            instructions: the referring expression / question, or a list of them (non-empty, at most
                :meth:`instruction_length_limit` tokens, without the reserved tokens).
            completions: optional answers, one per sample (e.g. ``"<think> ... </think><REF_POS>"``), appended after
                the generation prompt for teacher forcing (training, scoring).
            text: instead of ``instructions``: already-rendered prompts containing one image placeholder each (the
                path ``ProcessorMixin.apply_chat_template`` and TRL use); no template, no instruction checks.
            add_generation_prompt: end the prompt with the assistant header (keep ``True`` to generate or to append
                completions).
            append_slots: append the K slot tokens after each sample's last real token; a sample without
                ``<REF_POS>`` in its completion (or without a completion) gets one inserted first, and is reported in
                ``missing_ref_pos``.
            padding: passed to the tokenizer (``True``: pad to the longest sample).
            padding_side: ``"left"`` / ``"right"``; default ``tokenizer.padding_side`` (``"left"``, for generation).
            return_tensors: ``"pt"`` (default), ``"np"`` or ``None`` (lists).
            videos, audio: not supported; must be ``None`` (accepted for ``ProcessorMixin`` compatibility).
            kwargs: forwarded to the backbone processor (e.g. ``add_special_tokens``).

        Returns:
            ``BatchFeature`` with, for B samples of padded length T:

            - ``input_ids`` ``(B, T)``, ``attention_mask`` ``(B, T)``;
            - ``pixel_values``: Qwen2.5-VL ``(sum of patches, 3 * 2 * 14 * 14)`` with ``image_grid_thw`` ``(B, 3)`` and
              ``mm_token_type_ids`` ``(B, T)``; LLaVA ``(B, 3, H, W)``;
            - ``sam_pixel_values`` ``(B, 3, S, S)``, ``original_sizes`` ``(B, 2)`` (H, W) and
              ``reshaped_input_sizes`` ``(B, 2)`` (h', w': the unpadded region of the SAM frame);
            - with ``append_slots=True``: ``missing_ref_pos`` ``(B,)`` bool.
        """
        if videos is not None or audio is not None:
            raise ValueError("SegCompassProcessor takes images and text only; pass videos=None and audio=None.")
        if images is None:
            raise ValueError("SegCompassProcessor needs `images` (one per sample, or one for all samples).")
        if text is not None and instructions is not None:
            raise ValueError(
                "Pass either `instructions` (templated here) or `text` (already-rendered prompts), not both."
            )
        if text is None and instructions is None:
            raise ValueError("SegCompassProcessor needs `instructions` (a string or a list of strings).")

        if text is not None:
            prompts = _as_str_list(text, "text")
        else:
            instruction_list = _as_str_list(instructions, "instructions")
            self._check_instructions(instruction_list)
            prompts = [self.render_prompt(instruction, add_generation_prompt) for instruction in instruction_list]
        batch_size = len(prompts)

        pil_images = self._load_batch_images(images, batch_size)
        completion_list = [""] * batch_size
        if completions is not None:
            completion_list = _as_str_list(completions, "completions")
            if len(completion_list) != batch_size:
                raise ValueError(
                    f"Got {len(completion_list)} completions for {batch_size} samples; pass one completion per sample."
                )
            self._check_completions(completion_list)

        texts, missing_ref_pos = [], []
        for prompt, completion in zip(prompts, completion_list):
            sample = prompt + completion
            if append_slots:
                has_ref = self.ref_token in completion
                missing_ref_pos.append(not has_ref)
                sample += ("" if has_ref else self.ref_token) + "".join(self.slot_tokens)
            texts.append(sample)

        bos = getattr(self.tokenizer, "bos_token", None)
        kwargs.setdefault("add_special_tokens", not (bos and texts[0].startswith(bos)))
        backbone_inputs = self.backbone_processor(
            images=pil_images,
            text=texts,
            padding=padding,
            padding_side=padding_side or self.tokenizer.padding_side,
            return_tensors=return_tensors,
            **kwargs,
        )
        sam_inputs = self.sam_image_processor(pil_images, return_tensors=return_tensors)
        data = dict(backbone_inputs)
        data["sam_pixel_values"] = sam_inputs["pixel_values"]
        data["original_sizes"] = sam_inputs["original_sizes"]
        data["reshaped_input_sizes"] = sam_inputs["reshaped_input_sizes"]
        if append_slots:
            data["missing_ref_pos"] = torch.tensor(missing_ref_pos) if return_tensors == "pt" else missing_ref_pos
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _load_batch_images(self, images, batch_size: int) -> list:
        if isinstance(images, (list, tuple)):
            # ProcessorMixin.apply_chat_template passes one list of images per conversation.
            flat = []
            for item in images:
                if isinstance(item, (list, tuple)):
                    if len(item) != 1:
                        raise ValueError(
                            f"Each sample takes exactly one image, got a sample with {len(item)}; pass one image per "
                            "sample."
                        )
                    item = item[0]
                flat.append(item)
        else:
            flat = [images]
        if len(flat) == 1 and batch_size > 1:
            flat = flat * batch_size  # one image, several instructions: the image is shared
        elif len(flat) != batch_size:
            raise ValueError(
                f"Got {len(flat)} images for {batch_size} instructions; pass one image per instruction, or a single "
                "image to share across all instructions."
            )
        loaded: dict[int, Any] = {}  # a shared image is decoded once
        for image in flat:
            if id(image) not in loaded:
                loaded[id(image)] = load_image(image)
        return [loaded[id(image)] for image in flat]

    def _reserved_tokens(self) -> list[str]:
        return [self.ref_token, *self.slot_tokens, self.image_token]

    def _check_instructions(self, instructions: list[str]) -> None:
        for i, instruction in enumerate(instructions):
            if not instruction.strip():
                raise ValueError(
                    f"Instruction {i} is empty ({instruction!r}); pass the referring expression or question to answer."
                )
            for token in self._reserved_tokens():
                if token in instruction:
                    raise ValueError(
                        f"Instruction {i} contains the reserved token {token!r}; remove it (the processor places "
                        "the image, reference and slot tokens itself)."
                    )
        limit = self.instruction_length_limit()
        if limit is None:
            return
        encoded = self.tokenizer([s.strip() for s in instructions], add_special_tokens=False)["input_ids"]
        lengths = [len(ids) for ids in encoded]
        for i, length in enumerate(lengths):
            if length > limit:
                raise ValueError(
                    f"Instruction {i} is {length} tokens long, more than the limit of {limit} tokens; shorten it, or "
                    "raise the processor's `max_length`."
                )

    def _check_completions(self, completions: list[str]) -> None:
        for i, completion in enumerate(completions):
            for token in (*self.slot_tokens, self.image_token):
                if token in completion:
                    raise ValueError(
                        f"Completion {i} contains the reserved token {token!r}; pass the answer text only (slot "
                        "tokens are appended with `append_slots=True`)."
                    )

    # ------------------------------------------------------------------------------------------------------------
    # Slots on token ids
    # ------------------------------------------------------------------------------------------------------------

    def append_slot_tokens(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prompt_length: int | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
    ) -> SlotAppendOutput:
        """Append ``<SLOT_0> ... <SLOT_{K-1}>`` right after the last valid token of each row (e.g. after ``generate``).

        Works for left-padded, right-padded and mixed rows (a left-padded prompt followed by a right-padded
        completion): tokens after a row's last valid token stay where they are, after the slots. When every row ends
        with a valid token (left padding, or none) the result stays right-aligned (new padding on the left),
        otherwise new padding goes on the right.

        A row whose answer has no ``<REF_POS>`` gets one inserted before the slots and is flagged in
        ``missing_ref_pos`` (mark that answer malformed). The answer is the part after ``prompt_length`` when given;
        otherwise a row has its own ``<REF_POS>`` when it holds more of them than the rendered prompt template does.

        Args:
            input_ids: ``(B, T)`` token ids (prompt and answer).
            attention_mask: ``(B, T)``; default ``input_ids != pad_token_id``.
            prompt_length: number of leading columns that are the (left-padded) prompt, e.g.
                ``inputs["input_ids"].shape[1]`` before ``generate``.
            mm_token_type_ids: optional ``(B, T)`` Qwen2.5-VL modality ids, extended with 0 on the new tokens.

        Returns:
            :class:`SlotAppendOutput` ``(input_ids, attention_mask, slot_positions, missing_ref_pos,
            mm_token_type_ids)``; ``T'`` is at most ``T + K + 1`` (outer columns that are padding in every row are
            dropped, so the batch is as tight as the tokenizer would pad it).
        """
        input_ids = torch.as_tensor(input_ids)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}.")
        pad_id = self.tokenizer.pad_token_id
        if attention_mask is None:
            attention_mask = (input_ids != pad_id).long() if pad_id is not None else torch.ones_like(input_ids)
        attention_mask = torch.as_tensor(attention_mask, device=input_ids.device)
        device = input_ids.device
        for name, tensor in (("attention_mask", attention_mask), ("mm_token_type_ids", mm_token_type_ids)):
            if tensor is not None and tuple(tensor.shape) != tuple(input_ids.shape):
                raise ValueError(
                    f"{name} has shape {tuple(tensor.shape)} but input_ids has {tuple(input_ids.shape)}; they must "
                    "match."
                )
        batch_size, length = input_ids.shape
        valid = attention_mask.bool()
        empty_rows = (~valid.any(dim=1)).nonzero().flatten().tolist()
        if empty_rows:
            raise ValueError(f"Rows {empty_rows} have no valid token (attention_mask all 0); drop them first.")
        slot_ids = torch.tensor(self.slot_token_ids, dtype=input_ids.dtype, device=device)
        has_slots = (torch.isin(input_ids, slot_ids) & valid).any(dim=1)
        if has_slots.any():
            raise ValueError(
                f"Rows {has_slots.nonzero().flatten().tolist()} already contain slot tokens; append them only once."
            )

        is_ref = (input_ids == self.ref_token_id) & valid
        if prompt_length is not None:
            if not 0 <= int(prompt_length) <= length:
                raise ValueError(f"prompt_length must be in [0, {length}], got {prompt_length}.")
            has_ref = is_ref[:, int(prompt_length) :].any(dim=1)
        else:
            has_ref = is_ref.sum(dim=1) > self._prompt_ref_count()
        missing = ~has_ref

        positions = torch.arange(length, device=device).expand(batch_size, length)
        last = torch.where(valid, positions, -1).max(dim=1).values  # (B,)
        right_aligned = bool(valid[:, -1].all())
        extras = [
            torch.cat([torch.tensor([self.ref_token_id], dtype=input_ids.dtype, device=device), slot_ids])
            if missing[i]
            else slot_ids
            for i in range(batch_size)
        ]
        width = length + max(len(extra) for extra in extras)
        pad_value = pad_id if pad_id is not None else 0
        new_ids = torch.full((batch_size, width), pad_value, dtype=input_ids.dtype, device=device)
        new_mask = torch.zeros((batch_size, width), dtype=attention_mask.dtype, device=device)
        new_types = None
        if mm_token_type_ids is not None:
            new_types = torch.zeros((batch_size, width), dtype=mm_token_type_ids.dtype, device=device)
        slot_positions = torch.empty((batch_size, self.num_slots), dtype=torch.long, device=device)
        for i, extra in enumerate(extras):
            cut = int(last[i]) + 1  # the extra tokens go right after the last valid token
            offset = width - (length + len(extra)) if right_aligned else 0
            span = slice(offset, offset + length + len(extra))
            new_ids[i, span] = _insert(input_ids[i], cut, extra)
            new_mask[i, span] = _insert(attention_mask[i], cut, torch.ones(len(extra)))
            if new_types is not None:
                new_types[i, span] = _insert(mm_token_type_ids[i], cut, torch.zeros(len(extra)))
            first_slot = offset + cut + len(extra) - self.num_slots
            slot_positions[i] = torch.arange(first_slot, first_slot + self.num_slots, device=device)
        # Drop outer columns that are padding in every row, so the batch is as tight as a tokenizer would pad it.
        used = new_mask.bool().any(dim=0).nonzero().flatten()
        start, stop = int(used[0]), int(used[-1]) + 1
        new_ids, new_mask = new_ids[:, start:stop], new_mask[:, start:stop]
        new_types = None if new_types is None else new_types[:, start:stop]
        return SlotAppendOutput(new_ids, new_mask, slot_positions - start, missing, new_types)

    def _prompt_ref_count(self) -> int:
        """How many ``<REF_POS>`` the rendered prompt itself holds (the template mentions the token)."""
        return self.render_prompt("x").count(self.ref_token)

    def find_slot_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` long: the column of ``<SLOT_k>`` in each row of ``input_ids`` ``(B, T)`` (each slot token must
        appear exactly once per row)."""
        input_ids = torch.as_tensor(input_ids)
        columns = []
        for k, token_id in enumerate(self.slot_token_ids):
            hits = input_ids == token_id
            counts = hits.sum(dim=1)
            if not bool((counts == 1).all()):
                bad = (counts != 1).nonzero().flatten().tolist()
                raise ValueError(
                    f"Rows {bad} do not contain {self.slot_tokens[k]!r} exactly once; append the slot tokens with "
                    "`append_slot_tokens` or `append_slots=True`."
                )
            columns.append(hits.int().argmax(dim=1))
        return torch.stack(columns, dim=1)

    # ------------------------------------------------------------------------------------------------------------
    # Text
    # ------------------------------------------------------------------------------------------------------------

    @staticmethod
    def extract_reasoning(text: str) -> str:
        """See :func:`extract_reasoning`."""
        return extract_reasoning(text)

    # ------------------------------------------------------------------------------------------------------------
    # Masks
    # ------------------------------------------------------------------------------------------------------------

    @property
    def sam_input_size(self) -> tuple[int, int]:
        """(S_h, S_w): the padded SAM frame size (``sam_image_processor.pad_size``)."""
        pad = self.sam_image_processor.pad_size
        return int(pad["height"]), int(pad["width"])

    def valid_mask_sizes(self, reshaped_input_sizes, mask_size: int | tuple[int, int]) -> torch.Tensor:
        """``(B, 2)`` long: the (h, w) of the unpadded image region on an m x m mask grid over the padded SAM frame:
        ``ceil(h' * m / S_h)``, ``ceil(w' * m / S_w)``.

        Args:
            reshaped_input_sizes: ``(B, 2)`` (h', w') from ``__call__``.
            mask_size: m, or (m_h, m_w).
        """
        sizes = torch.as_tensor(reshaped_input_sizes, dtype=torch.long).reshape(-1, 2)
        mask_h, mask_w = (mask_size, mask_size) if isinstance(mask_size, int) else tuple(mask_size)
        frame_h, frame_w = self.sam_input_size
        rows = [
            (math.ceil(int(h) * mask_h / frame_h), math.ceil(int(w) * mask_w / frame_w)) for h, w in sizes.tolist()
        ]
        return torch.tensor(rows, dtype=torch.long).reshape(-1, 2)

    def post_process_masks(
        self,
        mask_logits,
        original_sizes,
        reshaped_input_sizes,
        threshold: float = 0.0,
        binarize: bool = True,
    ) -> list[torch.Tensor]:
        """Map mask logits on the padded SAM frame back to each original image.

        Uses ``SamImageProcessorPil.post_process_masks`` (pure torch): bilinear upsampling to the padded S x S frame,
        crop of the valid (h', w') region, bilinear resize to (H, W), then ``> threshold`` when ``binarize``.

        Args:
            mask_logits: ``(B, K, m, m)`` tensor, or a list of B ``(K, m, m)`` tensors/arrays.
            original_sizes: ``(B, 2)`` (H, W).
            reshaped_input_sizes: ``(B, 2)`` (h', w').
            threshold: logit threshold (0.0 is probability 0.5).
            binarize: return bool masks (else float logits).

        Returns:
            list of B tensors ``(K, H_b, W_b)``, bool when ``binarize`` else float32.
        """
        if isinstance(mask_logits, torch.Tensor):
            if mask_logits.ndim != 4:
                raise ValueError(f"mask_logits must be (batch, slots, m, m), got shape {tuple(mask_logits.shape)}.")
            per_sample = list(mask_logits)
        else:
            per_sample = [torch.as_tensor(m) for m in mask_logits]
        original = torch.as_tensor(original_sizes).reshape(-1, 2).tolist()
        reshaped = torch.as_tensor(reshaped_input_sizes).reshape(-1, 2).tolist()
        if not len(per_sample) == len(original) == len(reshaped):
            raise ValueError(
                f"Got mask logits for {len(per_sample)} samples, {len(original)} original_sizes and {len(reshaped)} "
                "reshaped_input_sizes; pass one of each per sample."
            )
        outputs = []
        for logits, size, valid in zip(per_sample, original, reshaped):
            if logits.ndim != 3:
                raise ValueError(f"Each sample's mask logits must be (slots, m, m), got shape {tuple(logits.shape)}.")
            (mask,) = self.sam_image_processor.post_process_masks(
                [logits.detach().float()[None]],
                [size],
                [valid],
                mask_threshold=threshold,
                binarize=binarize,
                pad_size={"height": self.sam_input_size[0], "width": self.sam_input_size[1]},
            )
            outputs.append(mask[0])
        return outputs


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def _check_num_slots(num_slots: int) -> None:
    if isinstance(num_slots, bool) or not isinstance(num_slots, int) or num_slots < 1:
        raise ValueError(f"num_slots must be a positive int (K, e.g. 6), got {num_slots!r}.")


def _insert(row: torch.Tensor, index: int, values: torch.Tensor) -> torch.Tensor:
    """``row`` (T,) with ``values`` (n,) inserted before position ``index``: (T + n,)."""
    return torch.cat([row[:index], values.to(device=row.device, dtype=row.dtype), row[index:]])


def _as_str_list(value, name: str) -> list[str]:
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        raise ValueError(f"`{name}` is empty; pass at least one string.")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ValueError(f"`{name}` must be a string or a list of strings; item {i} is {type(item).__name__}.")
    return items


def _resolve_backbone_kwargs(backbone_type: str, backbone_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    given = dict(backbone_kwargs or {})
    allowed = _BACKBONE_KWARG_NAMES[backbone_type]
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(
            f"Unknown backbone_kwargs {unknown} for backbone_type={backbone_type!r}; allowed: "
            f"{list(allowed) or 'none'}."
        )
    return {**LLAVA_DEFAULT_BACKBONE_KWARGS, **given} if backbone_type == "llava" else given


def _check_sam_image_processor(processor) -> None:
    pad = getattr(processor, "pad_size", None)
    if not getattr(processor, "do_pad", False) or not pad or not pad["height"] or not pad["width"]:
        raise ValueError(
            "sam_image_processor must pad to a fixed square frame (do_pad=True, pad_size={'height': S, 'width': S}); "
            "SAM's image encoder takes S x S inputs."
        )


def _pil_image_processor_from_dict(config: dict[str, Any]):
    import transformers

    config = dict(config)
    name = config.pop("image_processor_type", None)
    if not name:
        raise ValueError(f"An image processor entry of processor_config.json has no 'image_processor_type': {config}.")
    candidates = [name] if name.endswith("Pil") else [f"{name}Pil", name]
    for candidate in candidates:
        cls = getattr(transformers, candidate, None)
        if cls is not None:
            return cls(**config)
    return ProcessorMixin.get_possibly_dynamic_module(name)(**config)


def _processor_chat_template(pretrained_model_name_or_path) -> str | None:
    """The chat template stored with a stock processor (chat_template.jinja / chat_template.json), if any."""
    try:
        processor_dict, _ = ProcessorMixin.get_processor_dict(pretrained_model_name_or_path)
    except (OSError, ValueError):
        return None
    template = processor_dict.get("chat_template")
    return template if isinstance(template, str) else None
