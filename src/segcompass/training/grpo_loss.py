"""The loss side of :class:`~segcompass.training.grpo_trainer.SegCompassGRPOTrainer`: TRL's policy loss plus the
segmentation losses, from one backbone forward per completion (:mod:`.grpo_forward`) or, where that cannot be exact,
from a separate segmentation forward.

:class:`SegmentationLossMixin` overrides TRL's ``_get_per_token_logps_and_entropies`` and ``_compute_loss``; it sits
before ``GRPOTrainer`` in the trainer's bases and uses the trainer's ``segcompass``, ``args``, ``accelerator``,
``eos_token_ids``, ``_tokenizer``, ``_metrics``, ``_grid`` and ``_head_mode``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..sae.training import check_finite_loss
from ..sam_frame import valid_region_mask
from ..utils.logging import get_logger
from .grpo_forward import policy_segmentation_inputs, shared_forward
from .grpo_rollout import backbone_image_kwargs
from .losses import segmentation_losses

logger = get_logger(__name__)

__all__ = ["SegmentationLossMixin"]


class SegmentationLossMixin:
    """TRL's GRPO loss + ``λ_s · seg + λ_c · conf`` with the segmentation heads reading the policy forward's hidden
    states (``args.shared_policy_forward``, default) or their own forward."""

    _shared_request: dict | None = None  # set by _compute_loss for _get_per_token_logps_and_entropies
    _shared_output = None
    _warned_inexact = False

    def _stop_at_ref_token(self, ref_token_id: int) -> None:
        """Generation stops at ``<REF_POS>``: the answer format ends there (paper App. B.3), and nothing scored then
        follows a token the slot tokens must not see, so the policy forward is shared with the segmentation heads
        (:mod:`.grpo_forward`). A stop token set in ``args.generation_kwargs`` is kept as given."""
        if ref_token_id in self.eos_token_ids or "eos_token_id" in (self.args.generation_kwargs or {}):
            return
        self.eos_token_ids = [*self.eos_token_ids, ref_token_id]
        if getattr(self, "generation_kwargs", None) is not None:
            self.generation_kwargs["eos_token_id"] = self.eos_token_ids
        if getattr(self, "generation_config", None) is not None:
            self.generation_config.eos_token_id = self.eos_token_ids

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args,
                                           sam_pixel_values=None, original_sizes=None, reshaped_input_sizes=None,
                                           **kwargs):
        """TRL's log-probabilities; drops the SAM inputs that the SegCompass processor adds to TRL's
        ``forward_kwargs`` (the policy is the backbone alone). Called by :meth:`_compute_loss` with a pending
        segmentation request, it runs the one shared forward instead (:meth:`_shared_policy_forward`)."""
        request, self._shared_request = self._shared_request, None
        if request is not None:
            shared = self._shared_policy_forward(model, request, input_ids, attention_mask, logits_to_keep,
                                                 **kwargs)
            if shared is not None:
                return shared
        return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, *args,
                                                          **kwargs)

    def _shared_policy_forward(self, model, request: dict, input_ids, attention_mask, logits_to_keep: int, *,
                               compute_entropy=False, compute_aux_loss=False, pixel_values=None,
                               image_grid_thw=None, mm_token_type_ids=None, **_):
        """One forward for TRL's log-probabilities and the segmentation heads (:mod:`.grpo_forward`); stores the
        heads' output in ``self._shared_output``. Returns None (so TRL's own forward runs and the segmentation
        forward is separate) where a row cannot share it exactly (:attr:`PolicySegmentationInputs.exact`)."""
        start = input_ids.shape[1] - logits_to_keep
        ref_id, slot_ids = self.segcompass._special_ids()
        sequence = policy_segmentation_inputs(
            input_ids[:, :start], attention_mask[:, :start], input_ids[:, start:], attention_mask[:, start:],
            ref_token_id=ref_id, slot_token_ids=slot_ids, stop_token_ids=self.eos_token_ids,
            pad_token_id=self._tokenizer.pad_token_id, mm_token_type_ids=mm_token_type_ids,
        )
        if not bool(sequence.exact.all()):
            if not self._warned_inexact:
                logger.warning("Some completions go on after <REF_POS> (is it missing from the stop tokens in "
                               "`generation_kwargs`?); those micro-batches run a separate segmentation forward.")
                self._warned_inexact = True
            return None
        image_embeddings, valid_sizes, sam_pixel_values = self._segmentation_image_inputs(request)
        backbone_inputs = {}
        if pixel_values is not None:
            backbone_inputs["pixel_values"] = pixel_values
            if image_grid_thw is not None:
                backbone_inputs["image_grid_thw"] = image_grid_thw
        self._head_mode(self.model.training)
        log_probs, entropy, aux_loss, self._shared_output = shared_forward(
            model, self.segcompass, sequence, image_embeddings, valid_sizes, completion_length=logits_to_keep,
            backbone_inputs=backbone_inputs, compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss,
            autocast=self.accelerator.autocast, sam_pixel_values=sam_pixel_values,
        )
        return log_probs, entropy, aux_loss

    # -------------------------------------------------------------------------------------------- loss
    def _segmentation_image_inputs(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SAM image keys ``(B, C, h, w)`` (recomputed with gradients when SAM's encoder trains), the valid mask
        sizes ``(B, 2)`` and the SAM input pixels ``(B, 3, S, S)`` (read by a mask refiner) of the batch."""
        image_embeddings = inputs["seg_image_embeddings"]
        if not self.args.freeze_vision_encoder:  # the rollout's keys have no graph: recompute with gradients
            with self.accelerator.autocast():
                image_embeddings = self.segcompass.get_image_embeddings(inputs["seg_sam_pixel_values"])
        return image_embeddings, inputs["seg_valid_sizes"], inputs["seg_sam_pixel_values"]

    def _segmentation_losses(self, out, inputs: dict[str, Any]):
        """:func:`segmentation_losses` of a SegCompass output against the batch's ground truth."""
        return segmentation_losses(
            out.heatmap_logits.float(), out.mask_logits.float(), out.confidence_logits.float(),
            list(inputs["seg_gt_masks"]), lambda_seg=self.args.lambda_seg, lambda_conf=self.args.lambda_conf,
            lambda_dice=self.args.lambda_dice, lambda_mask_bce=self.args.lambda_mask_bce,
            valid_mask=valid_region_mask(inputs["seg_valid_sizes"], self._grid),
            matching_source=self.args.matching_source, confidence_targets=self.args.confidence_targets,
        )

    def segmentation_forward(self, inputs: dict[str, Any]):
        """A separate SegCompass forward (with gradients) on the batch's scoring sequences: returns
        ``(SegCompassOutput, SegmentationLossOutput)``. :meth:`_compute_loss` uses it only when the policy forward
        cannot be shared (``shared_policy_forward=False``, or completions that go on after ``<REF_POS>``)."""
        batch = inputs["seg_input_ids"].shape[0]
        kwargs = {}
        if inputs.get("pixel_values") is not None:
            fields = {"pixel_values": inputs["pixel_values"], "image_grid_thw": inputs.get("image_grid_thw")}
            kwargs = backbone_image_kwargs(fields, 0, batch)
        if "seg_mm_token_type_ids" in inputs:
            kwargs["mm_token_type_ids"] = inputs["seg_mm_token_type_ids"]
        self._head_mode(self.model.training)
        image_embeddings, valid_sizes, sam_pixel_values = self._segmentation_image_inputs(inputs)
        with self.accelerator.autocast():
            out = self.segcompass(
                input_ids=inputs["seg_input_ids"], attention_mask=inputs["seg_attention_mask"],
                image_embeddings=image_embeddings, sam_pixel_values=sam_pixel_values, valid_mask_sizes=valid_sizes,
                **kwargs,
            )
        return out, self._segmentation_losses(out, inputs)

    def _compute_loss(self, model, inputs):
        """TRL's GRPO loss + ``λ_s · seg + λ_c · conf`` (scaled like TRL's loss for gradient accumulation)."""
        shared = getattr(self.args, "shared_policy_forward", True)
        self._shared_request, self._shared_output = (inputs if shared else None), None
        try:
            loss = super()._compute_loss(model, inputs)
            if self._shared_request is not None:
                raise RuntimeError("SegCompassGRPOTrainer: TRL's loss did not compute the policy log-probabilities "
                                   "through `_get_per_token_logps_and_entropies`; TRL's call order changed.")
            out = self._shared_output
        finally:
            self._shared_request, self._shared_output = None, None
        losses = self._segmentation_losses(out, inputs) if out is not None else self.segmentation_forward(inputs)[1]
        mode = "train" if self.model.training else "eval"
        scale = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        for name, value in losses.metrics().items():
            if name == "num_matched":
                continue
            self._metrics[mode][f"seg/{name}"].append(value)
        total = loss + losses.loss.to(loss.dtype) / scale
        # before backward: no update (and so no saved checkpoint) ever holds NaN weights
        if not torch.isfinite(total.detach()).all():
            check_finite_loss(total, f"GRPO step {self.state.global_step + 1} (epoch {self.state.epoch or 0:.2f}; "
                                     f"policy loss {float(loss.detach()):.4g}, segmentation loss "
                                     f"{float(losses.loss.detach()):.4g})",
                              "Check the dataset's masks and images, or lower --learning_rate / the lr multipliers.")
        return total
