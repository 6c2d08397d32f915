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

from collections.abc import Sequence
from typing import Any

import torch
from transformers import (
    BatchFeature,
    ProcessorMixin,
    SamImageProcessorPil,
)

from .answer_format import (
    DEFAULT_NUM_SLOTS,
    DEFAULT_PROMPT_TEMPLATE,
    DEFAULT_REF_TOKEN,
    DEFAULT_SLOT_TOKEN_TEMPLATE,
    INSTRUCTION_FIELD,
    SlotSequences,
    append_slots_to_text,
    build_messages,
    check_completions,
    check_instructions,
    check_num_slots,
    extract_reasoning,
    render_prompt,
    slot_token_strings,
)
from .backbone_processing import (
    BACKBONE_TYPES,
    ImageOnlyQwen2_5_VLProcessor,
    add_special_tokens_to_tokenizer,
    build_backbone_processor,
    check_sam_image_processor,
    load_backbone_tokenizer_and_image_processor,
    pil_image_processor_from_dict,
    processor_chat_template,
    resolve_backbone_kwargs,
)
from .image_utils import load_image_batch
from .processing_inputs import (  # noqa: F401 (MAX_ASPECT_RATIO re-exported)
    MAX_ASPECT_RATIO,
    _as_str_list,
    _check_aspect_ratios,
    _check_no_control_characters,
)
from .processing_outputs import SegCompassOutputProcessingMixin
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
    "SlotSequences",
    "add_special_tokens_to_tokenizer",
    "extract_reasoning",
    "slot_token_strings",
]

class SegCompassProcessor(SegCompassOutputProcessingMixin, ProcessorMixin):
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
            :data:`segcompass.backbone_processing.LLAVA_DEFAULT_BACKBONE_KWARGS`, the llava-1.5 values). A plain dict,
            so it survives ``save_pretrained``.

    Example:

    ```python
    processor = SegCompassProcessor.from_pretrained("path/to/segcompass")
    inputs = processor(image, "the mug closest to the sink")          # generation prompt, left-padded
    names = processor.backbone_processor.model_input_names
    sequences = backbone.generate(**{k: v for k, v in inputs.items() if k in names}, max_new_tokens=512)
    answer = processor.batch_decode(sequences[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    reasoning = processor.extract_reasoning(answer)
    slotted = processor.append_slot_tokens(sequences, prompt_length=inputs["input_ids"].shape[1])
    # slotted.input_ids / .attention_mask / .slot_positions (B, K) / .malformed (B,) -> one forward pass
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
        check_num_slots(num_slots)
        if not isinstance(prompt_template, str) or prompt_template.count(INSTRUCTION_FIELD) != 1:
            raise ValueError(
                f"prompt_template must contain '{INSTRUCTION_FIELD}' exactly once, got {prompt_template!r}."
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
        backbone_kwargs = resolve_backbone_kwargs(backbone_type, backbone_kwargs)
        sam_image_processor = SamImageProcessorPil() if sam_image_processor is None else sam_image_processor
        check_sam_image_processor(sam_image_processor)
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

    # -------------------------------------------------------------------------------- construction helpers

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
        tokenizer, image_processor = load_backbone_tokenizer_and_image_processor(
            pretrained_model_name_or_path, num_slots, ref_token, slot_token_template
        )
        return cls(
            image_processor=image_processor,
            tokenizer=tokenizer,
            sam_image_processor=sam_image_processor,
            chat_template=kwargs.pop("chat_template", None) or processor_chat_template(pretrained_model_name_or_path),
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
            pil_image_processor_from_dict(configs["image_processor"]),
            tokenizer,
            pil_image_processor_from_dict(configs["sam_image_processor"]),
        ]

    # ---------------------------------------------------------------------------------------------- tokens

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
        return build_backbone_processor(self.backbone_type, self.image_processor, self.tokenizer, self.chat_template,
                                        self.backbone_kwargs)

    @property
    def image_token(self) -> str:
        """The backbone's image placeholder token (``<|image_pad|>`` for Qwen2.5-VL, ``<image>`` for LLaVA)."""
        return self.backbone_processor.image_token

    @property
    def model_input_names(self) -> list[str]:
        return [*self.backbone_processor.model_input_names, "sam_pixel_values"]

    def _reserved_tokens(self) -> list[str]:
        return [self.ref_token, *self.slot_tokens, self.image_token]

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

    # ---------------------------------------------------------------------------------------------- prompt

    def build_messages(self, instruction: str, image: Any = None) -> list[dict[str, Any]]:
        """The chat messages for ``instruction`` (:func:`segcompass.answer_format.build_messages`); ``image``
        (optional) is stored in the image part (for ``apply_chat_template``, TRL datasets)."""
        return build_messages(self.prompt_template, instruction, image, self.system_prompt)

    def render_prompt(self, instruction: str, add_generation_prompt: bool = True) -> str:
        """The prompt string for ``instruction`` (chat template applied, one image placeholder, not yet expanded)."""
        chat_template = self.chat_template or getattr(self.tokenizer, "chat_template", None)
        return render_prompt(self.tokenizer, chat_template, self.build_messages(instruction), self.image_token,
                             add_generation_prompt)

    def instruction_length_limit(self) -> int | None:
        """The instruction length limit in tokens: ``max_length`` if set, else the tokenizer's finite
        ``model_max_length``, else ``None``."""
        if self.max_length is not None:
            return self.max_length
        model_max = getattr(self.tokenizer, "model_max_length", None)
        return int(model_max) if model_max is not None and model_max < 1e9 else None

    # -------------------------------------------------------------------------------------------- __call__

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
            _check_no_control_characters(instruction_list)
            check_instructions(instruction_list, self._reserved_tokens(), self.tokenizer,
                               self.instruction_length_limit())
            prompts = [self.render_prompt(instruction, add_generation_prompt) for instruction in instruction_list]
        batch_size = len(prompts)

        pil_images = load_image_batch(images, batch_size)
        _check_aspect_ratios(pil_images)
        completion_list = [""] * batch_size
        if completions is not None:
            completion_list = _as_str_list(completions, "completions")
            if len(completion_list) != batch_size:
                raise ValueError(
                    f"Got {len(completion_list)} completions for {batch_size} samples; pass one completion per sample."
                )
            check_completions(completion_list, [*self.slot_tokens, self.image_token])

        texts, missing_ref_pos = [], []
        for prompt, completion in zip(prompts, completion_list):
            if append_slots:
                completion, missing = append_slots_to_text(completion, self.ref_token, self.slot_tokens)
                missing_ref_pos.append(missing)
            texts.append(prompt + completion)

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


def _register_with_transformers() -> None:
    """``AutoProcessor`` knows SegCompass as soon as this module is imported (``segcompass._registration``)."""
    from transformers import AutoProcessor

    from .configuration_segcompass import SegCompassConfig

    AutoProcessor.register(SegCompassConfig, SegCompassProcessor, exist_ok=True)


_register_with_transformers()
