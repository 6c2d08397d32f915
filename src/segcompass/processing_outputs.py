"""What a SegCompass processor does after the model ran: append the slot tokens to generated ids, find the slot
positions, extract the reasoning text, and map mask logits on the SAM frame back to each original image. Mixed
into :class:`~segcompass.processing_segcompass.SegCompassProcessor`."""

from __future__ import annotations

import torch

from .answer_format import SlotSequences, extract_reasoning, find_slot_positions, split_and_append_slot_ids
from .sam_frame import masks_to_original_sizes, valid_mask_sizes


class SegCompassOutputProcessingMixin:
    """The output side of :class:`~segcompass.processing_segcompass.SegCompassProcessor`. Expects ``tokenizer``,
    ``ref_token_id``, ``slot_token_ids``, ``slot_tokens`` and ``sam_image_processor`` on the processor."""

    # ---------------------------------------------------------------------------------- slots on token ids

    def append_slot_tokens(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prompt_length: int | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
    ) -> SlotSequences:
        """Prompt + answer (cut after its first ``<REF_POS>``) + ``<SLOT_0> ... <SLOT_{K-1}>``, left-padded, e.g.
        after ``generate``: :func:`segcompass.answer_format.append_slot_ids` (the one slot-append, also used by the
        model's ``segment`` and the GRPO trainer) with this processor's token ids.

        An answer without ``<REF_POS>`` is cut at its first end-of-sequence / padding token, gets one appended and is
        flagged in ``malformed``.

        Args:
            input_ids: ``(B, T)`` token ids: the prompt in the first ``prompt_length`` columns, then the answer.
            attention_mask: ``(B, T)``; default ``input_ids != pad_token_id``.
            prompt_length: number of leading columns that are the (left-padded) prompt, e.g.
                ``inputs["input_ids"].shape[1]`` before ``generate``. Required.
            mm_token_type_ids: optional ``(B, T)`` Qwen2.5-VL modality ids (only the prompt's are read).

        Returns:
            :class:`~segcompass.answer_format.SlotSequences` (``input_ids``, ``attention_mask``, ``completion_ids``,
            ``malformed``, ``slot_positions`` ``(B, K)``, ``mm_token_type_ids``).
        """
        eos = self.tokenizer.eos_token_id
        return split_and_append_slot_ids(
            input_ids, prompt_length, attention_mask, ref_token_id=self.ref_token_id,
            slot_token_ids=self.slot_token_ids, pad_token_id=self.tokenizer.pad_token_id,
            stop_token_ids=[] if eos is None else [eos], mm_token_type_ids=mm_token_type_ids,
        )

    def find_slot_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` long: the column of ``<SLOT_k>`` in each row of ``input_ids`` ``(B, T)`` (each slot token must
        appear exactly once per row; :func:`segcompass.answer_format.find_slot_positions`)."""
        return find_slot_positions(input_ids, self.slot_token_ids, self.slot_tokens)

    # ------------------------------------------------------------------------------------------------ text

    @staticmethod
    def extract_reasoning(text: str) -> str:
        """See :func:`extract_reasoning`."""
        return extract_reasoning(text)

    # ----------------------------------------------------------------------------------------------- masks

    @property
    def sam_input_size(self) -> tuple[int, int]:
        """(S_h, S_w): the padded SAM frame size (``sam_image_processor.pad_size``)."""
        pad = self.sam_image_processor.pad_size
        return int(pad["height"]), int(pad["width"])

    def valid_mask_sizes(self, reshaped_input_sizes, mask_size: int | tuple[int, int]) -> torch.Tensor:
        """``(B, 2)`` long: the (h, w) of the unpadded image region on an m x m mask grid over the padded SAM frame
        (:func:`segcompass.sam_frame.valid_mask_sizes` with this processor's frame size).

        Args:
            reshaped_input_sizes: ``(B, 2)`` (h', w') from ``__call__``.
            mask_size: m, or (m_h, m_w).
        """
        return valid_mask_sizes(reshaped_input_sizes, mask_size, self.sam_input_size)

    def post_process_masks(
        self,
        mask_logits,
        original_sizes,
        reshaped_input_sizes,
        threshold: float = 0.0,
        binarize: bool = True,
    ) -> list[torch.Tensor]:
        """Map mask logits on the padded SAM frame back to each original image.

        :func:`segcompass.sam_frame.masks_to_original_size` (SAM's post-processing): bilinear upsampling to the
        padded S x S frame, crop of the valid (h', w') region, bilinear resize to (H, W), then ``> threshold`` when
        ``binarize``.

        Args:
            mask_logits: ``(B, K, m, m)`` tensor, or a list of B ``(K, m, m)`` tensors/arrays.
            original_sizes: ``(B, 2)`` (H, W).
            reshaped_input_sizes: ``(B, 2)`` (h', w').
            threshold: logit threshold (0.0 is probability 0.5).
            binarize: return bool masks (else float logits).

        Returns:
            list of B tensors ``(K, H_b, W_b)``, bool when ``binarize`` else float32.
        """
        masks = masks_to_original_sizes(mask_logits, original_sizes, reshaped_input_sizes, self.sam_input_size)
        return [mask > threshold if binarize else mask for mask in masks]  # B x (K, H_b, W_b)
