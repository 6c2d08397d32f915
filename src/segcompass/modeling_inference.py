"""Inference of :class:`~segcompass.modeling_segcompass.SegCompassForReasoningSegmentation`: generate the reasoning,
build the scoring sequence (prompt + completion cut at ``<REF_POS>`` + the K slot tokens), run one scoring forward
and bring the masks back to the original image sizes.

Dimension glossary: B batch, Tp prompt tokens, Tn / Tc generated tokens, T' scoring tokens, K slots, (H, W) original
image size.
"""

from __future__ import annotations

import torch

from .answer_format import append_slot_ids
from .modeling_outputs import SegCompassSegmentationOutput
from .sam_frame import masks_to_original_sizes


class SegCompassInferenceMixin:
    """``build_scoring_inputs``, ``generate_reasoning`` and ``segment`` for the SegCompass model, which provides
    ``backbone``, ``forward``, ``get_image_embeddings``, ``sam_input_size``, ``_special_ids`` and
    ``never_generated_token_ids``."""

    def build_scoring_inputs(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor, pad_token_id: int,
        eos_token_ids: list[int] | None = None, mm_token_type_ids: torch.Tensor | None = None,
    ) -> dict:
        """Prompt + completion cut at its first <REF_POS> (appended when missing) + the K slot tokens, left-padded:
        :func:`segcompass.answer_format.append_slot_ids` with this model's special token ids.

        Args:
            prompt_ids, prompt_mask (`(B, Tp)`): left-padded prompts; completion_ids (`(B, Tc)`): generated tokens.

        Returns:
            dict with ``input_ids``, ``attention_mask`` (and ``mm_token_type_ids`` when given) of shape (B, T'),
            ``completion_ids`` (list of (t_b,)) and ``malformed`` (B,) bool.
        """
        ref_id, slot_ids = self._special_ids()
        slotted = append_slot_ids(prompt_ids, prompt_mask, completion_ids, ref_token_id=ref_id,
                                  slot_token_ids=slot_ids, pad_token_id=pad_token_id,
                                  stop_token_ids=list(eos_token_ids or []), mm_token_type_ids=mm_token_type_ids)
        result = {"input_ids": slotted.input_ids, "attention_mask": slotted.attention_mask,
                  "completion_ids": slotted.completion_ids, "malformed": slotted.malformed}
        if mm_token_type_ids is not None:
            result["mm_token_type_ids"] = slotted.mm_token_type_ids
        return result

    @torch.no_grad()
    def generate_reasoning(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        *,
        max_new_tokens: int = 256,
        do_sample: bool = False,
        pad_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        **backbone_inputs,
    ) -> dict:
        """Generate each prompt's answer (never sampling the slot tokens or image placeholders; stopping at
        ``<REF_POS>`` or an end-of-sequence token) and build the scoring sequences: :meth:`build_scoring_inputs` of the generated tokens. ``pad_token_id`` / ``eos_token_id`` default to
        the backbone's generation config (pad falls back to the first end-of-sequence id).

        Args:
            input_ids, attention_mask (`(B, Tp)`): left-padded prompts; backbone_inputs: the processor's image inputs.

        Returns:
            the dict of :meth:`build_scoring_inputs` (``input_ids``, ``attention_mask`` ``(B, T')``,
            ``completion_ids``, ``malformed`` and, for Qwen2.5-VL, ``mm_token_type_ids``).
        """
        generation_config = self.backbone.generation_config
        pad_token_id = pad_token_id if pad_token_id is not None else generation_config.pad_token_id
        eos_token_id = eos_token_id if eos_token_id is not None else generation_config.eos_token_id
        eos_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
        if pad_token_id is None:
            pad_token_id = eos_ids[0] if eos_ids else 0
        generate_kwargs = dict(backbone_inputs)
        generate_kwargs.setdefault("suppress_tokens", self.never_generated_token_ids())
        ref_id, _ = self._special_ids()
        # <REF_POS> ends the answer (everything after it is cut below), so generation stops there too
        generated = self.backbone.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
            pad_token_id=pad_token_id, eos_token_id=[*eos_ids, ref_id], **generate_kwargs,
        )  # (B, Tp + Tn)
        return self.build_scoring_inputs(
            input_ids, attention_mask, generated[:, input_ids.shape[1]:], pad_token_id, eos_ids,
            backbone_inputs.get("mm_token_type_ids"),
        )

    @torch.no_grad()
    def segment(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        *,
        sam_pixel_values: torch.FloatTensor | None = None,
        image_embeddings: torch.FloatTensor | None = None,
        original_sizes: torch.Tensor | None = None,
        reshaped_input_sizes: torch.Tensor | None = None,
        max_new_tokens: int = 256,
        do_sample: bool = False,
        pad_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        return_heatmaps: bool = True,
        **backbone_inputs,
    ) -> SegCompassSegmentationOutput:
        """Generate the reasoning, append the concentration tokens, run one scoring forward, resize the masks.

        Args:
            input_ids, attention_mask (`(B, Tp)`): left-padded prompts from [`SegCompassProcessor`].
            sam_pixel_values / image_embeddings: SAM branch input (embeddings are reused when given).
            original_sizes, reshaped_input_sizes (`(B, 2)`): from the processor; when given, masks and heatmaps are
                returned at each original size.
            backbone_inputs: ``pixel_values``, ``image_grid_thw``, ``mm_token_type_ids`` … as the processor gave them.
        """
        if image_embeddings is None:
            if sam_pixel_values is None:
                raise ValueError("Pass `sam_pixel_values` or `image_embeddings` to `segment`.")
            image_embeddings = self.get_image_embeddings(sam_pixel_values)
        scoring = self.generate_reasoning(
            input_ids, attention_mask, max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad_token_id,
            eos_token_id=eos_token_id, **backbone_inputs,
        )
        forward_kwargs = {k: v for k, v in backbone_inputs.items() if k != "mm_token_type_ids"}
        if "mm_token_type_ids" in scoring:
            forward_kwargs["mm_token_type_ids"] = scoring["mm_token_type_ids"]
        outputs = self.forward(
            input_ids=scoring["input_ids"], attention_mask=scoring["attention_mask"], image_embeddings=image_embeddings,
            sam_pixel_values=sam_pixel_values, reshaped_input_sizes=reshaped_input_sizes, **forward_kwargs,
        )
        result = SegCompassSegmentationOutput(
            sequences=scoring["input_ids"], completion_ids=scoring["completion_ids"], malformed=scoring["malformed"],
            confidences=outputs.confidence_logits.sigmoid(), outputs=outputs,
        )
        if original_sizes is not None and reshaped_input_sizes is not None:
            sizes = (original_sizes, reshaped_input_sizes, self.sam_input_size)
            result.masks = [m > 0 for m in masks_to_original_sizes(outputs.mask_logits, *sizes)]  # B x (K, H, W)
            if return_heatmaps:
                result.heatmaps = [h.sigmoid() for h in masks_to_original_sizes(outputs.heatmap_logits, *sizes)]
        return result
