"""SegCompassGRPOTrainer: GRPO on the reasoning policy with masks in the rewards and the segmentation losses in the
same backward (paper §3.3, eq. 6; DESIGN decision 7; dependency notes §4).

How it fits TRL 1.16's ``GRPOTrainer`` (this module holds the trainer and its TRL overrides; the other jobs live in
:mod:`.grpo_setup` (checks before TRL starts), :mod:`.grpo_data` (dataset, rollout targets), :mod:`.grpo_rollout`
(scoring sequences, mask decoding), :mod:`.grpo_checkpoint` (checkpoint files) and :mod:`.rewards`):

* **Policy = the backbone.** TRL receives ``model.backbone`` (a transformers Qwen2.5-VL / LLaVA model), so
  generation, the fused-LM-head log-probabilities and the KL term work exactly as TRL expects. The trainer keeps the
  full [`SegCompassForReasoningSegmentation`] as ``trainer.segcompass``; its heads join the optimizer
  (:meth:`create_optimizer`), the gradient clipping and the saved checkpoint.
* **Reference model.** With ``beta > 0`` TRL would reload ``config._name_or_path`` of the backbone, which is not a
  standalone checkpoint here; the trainer deep-copies the initial backbone instead (frozen, fused LM head). With a
  ``peft_config`` no copy is made: TRL computes the reference log-probabilities with the adapter disabled.
* **PEFT / LoRA** (``peft_config=``): TRL wraps the backbone in a ``PeftModel``; the LoRA layers are injected in
  place, so ``trainer.segcompass.backbone`` (the PeftModel's base model) runs with the adapters in the segmentation
  forward too. Only the adapter parameters of the backbone are trained (with the backbone's lr), the heads keep their
  multipliers. :meth:`_save` writes the *merged* model (a merged copy; the training model is untouched), loadable
  with ``AutoModel.from_pretrained``, plus the adapter alone in ``adapter/`` (``PeftModel.from_pretrained``).
  Target the language model only, e.g. ``LoraConfig(target_modules=r".*language_model.*\\.(q_proj|k_proj|v_proj|"
  r"o_proj|gate_proj|up_proj|down_proj)")`` (a plain module-name list also wraps Qwen2.5-VL's vision MLPs).
* **Checkpoints and resuming** (``save_strategy``, ``train(resume_from_checkpoint=...)``): see
  :mod:`.grpo_checkpoint`. :meth:`_save`, :meth:`_save_checkpoint`, :meth:`_load_from_checkpoint` and
  :meth:`_load_best_model` write / read the SegCompass weights and the reference policy there; the sampler is
  epoch-deterministic (:class:`_EpochRepeatSampler`), so a resumed run repeats the uninterrupted one.
* **Rollout** (:meth:`_tokenize_prompts`, :meth:`_generate`): prompts are tokenized with [`SegCompassProcessor`]
  (which also gives SAM's inputs), the backbone samples the completions (slot tokens suppressed), and a no-grad
  SegCompass scoring forward (completion cut at its first ``<REF_POS>``, appended when missing, + the K slot tokens;
  :func:`.grpo_rollout.decode_rollout_masks`) decodes the K masks of every completion. They reach the reward
  functions as ``pred_masks`` (``(K, m, m)`` probabilities on SAM's letterboxed frame), ``pred_confidences``
  (``(K,)`` probabilities) and ``pred_instance_limits`` (the most slots kept, or None). Completions are
  re-decoded keeping ``<REF_POS>`` (TRL strips special tokens), so the format reward can see it.
* **Loss** (:meth:`_generate_and_score_completions`, :meth:`_compute_loss`): the SAM image keys and ground-truth
  masks on the m × m grid (:func:`.grpo_data.rollout_targets`) travel in the batch dict (shuffled and split with it);
  the policy loss of TRL plus ``λ_s · seg + λ_c · conf`` (:func:`segmentation_losses`) is returned, so one backward
  covers both. **One backbone forward per completion** (``shared_policy_forward=True``, :mod:`.grpo_forward`): the
  slot tokens are teacher-forced after each completion in the very forward that gives TRL its log-probabilities
  (TRL's fused LM head scores only the completion tokens; the slot tokens see exactly the scoring sequence through
  the attention mask), and the heads read ``hidden_states[L]`` and the last layer from it. Generation stops at
  ``<REF_POS>`` so that this is exact; a micro-batch where it is not (a custom stop list) falls back to a separate
  segmentation forward (:meth:`segmentation_forward`, also what ``shared_policy_forward=False`` runs). The rollout's
  no-grad scoring forward decodes the masks for the rewards and computes no language-model logits.

Logged per step, besides TRL's metrics (``rewards/<fn>/mean`` per reward component, ``kl``, ``entropy`` ...):
``seg/loss``, ``seg/seg``, ``seg/bce``, ``seg/dice``, ``seg/conf``, ``seg/matched_iou``, ``seg/rollout_iou`` (mean IoU
of the rollouts' predicted masks, union of confident slots vs union of instances, on the mask grid:
:func:`.reward_scores.rollout_iou`) and ``seg/malformed_ratio`` (completions without ``<REF_POS>``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import torch
from accelerate.utils import is_peft_model
from torch import nn
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.data_utils import apply_chat_template, prepare_multimodal_messages
from trl.trainer.callbacks import SyncRefModelCallback
from trl.trainer.utils import RepeatSampler, add_fused_lm_head, disable_dropout_in_model

from ..modeling_segcompass import SegCompassForReasoningSegmentation
from ..processing_segcompass import SegCompassProcessor
from ..sam_frame import valid_region_mask
from ..utils.io import atomic_path
from ..utils.logging import get_logger
from . import grpo_checkpoint
from .grpo_config import SegCompassGRPOConfig
from .grpo_data import (
    is_conversational_prompt,
    rollout_targets,
    validate_grpo_dataset,
)
from .grpo_loss import SegmentationLossMixin
from .grpo_optim import HeadOptimizationMixin, ZeroHeadGradients
from .grpo_rollout import decode_rollout_masks, sam_image_embeddings, scoring_inputs
from .grpo_setup import check_grpo_args, load_model_and_processor, prepare_model_for_grpo
from .reward_scores import rollout_iou
from .rewards import format_reward, mask_reward, resolve_reward_threshold

logger = get_logger(__name__)

__all__ = ["SegCompassGRPOTrainer"]


_SAM_KEYS = ("sam_pixel_values", "original_sizes", "reshaped_input_sizes")
_HEADS = ("concept_interface", "slot_mapper", "mask_decoder")  # trained heads outside TRL's model


class _EpochRepeatSampler(RepeatSampler):
    """TRL's ``RepeatSampler`` whose order in epoch ``e`` depends only on ``(seed, e)``, not on how many epochs this
    sampler object iterated before. TRL's sampler draws each epoch's permutation from one stateful generator, so a
    run resumed at epoch ``e`` would replay epoch 0's order; here :meth:`set_epoch` (called by the Trainer at every
    epoch) re-seeds and skips ``e`` permutations, which reproduces TRL's uninterrupted sequence exactly."""

    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        if self.shuffle and self.seed is not None:
            self.generator.manual_seed(self.seed)
            for _ in range(self.epoch):
                torch.randperm(self.num_samples, generator=self.generator)
        yield from super().__iter__()


# ------------------------------------------------------------------------------------------------ trainer
class SegCompassGRPOTrainer(SegmentationLossMixin, HeadOptimizationMixin, GRPOTrainer):
    r"""GRPO for SegCompass: the backbone is TRL's policy; masks are decoded for every rollout and the supervised
    segmentation / confidence losses join the policy loss (see the module docstring).

    Args:
        model: a [`SegCompassForReasoningSegmentation`] or a path to one.
        reward_funcs: TRL reward functions; default ``[format_reward, mask_reward]`` with ``reward_weights`` 0.3 /
            0.7 (when ``args.reward_weights`` is None). They receive ``pred_masks``, ``pred_confidences``,
            ``pred_instance_limits`` and the dataset columns (``masks`` ...) as keyword arguments.
        args: a [`SegCompassGRPOConfig`].
        train_dataset / eval_dataset: columns ``prompt``, ``image``, ``masks`` (+ ``no_target``); see
            :func:`prepare_grpo_dataset` and :func:`validate_grpo_dataset`.
        processing_class: the [`SegCompassProcessor`]; default: loaded from the model's directory.
        callbacks, optimizers: as for ``GRPOTrainer``.
        peft_config: optional ``peft.PeftConfig`` (e.g. a ``LoraConfig`` on the language model) applied to the
            backbone by TRL; the reference policy is then the adapter-disabled backbone and the saved checkpoint is
            merged (adapter alone in ``<output_dir>/adapter``).

    Raises:
        ValueError: before TRL starts, for a wrong model / processor / config type, a missing column, an empty
            dataset, masks whose size differs from their image, unsupported TRL features (vLLM, tools), or
            ``sync_ref_model`` with a ``peft_config``.

    Example:

    ```python
    model = SegCompassForReasoningSegmentation.from_pretrained(path)
    processor = SegCompassProcessor.from_pretrained(path)
    train = prepare_grpo_dataset(rows, processor)              # rows: image, instruction, masks, no_target, ...
    trainer = SegCompassGRPOTrainer(model, args=SegCompassGRPOConfig(output_dir="out"), train_dataset=train,
                                    processing_class=processor)
    trainer.supervised_warmup(rows, num_steps=200)             # format warm-up (reasoning + <REF_POS>)
    trainer.train()
    trainer.save_model()                                       # AutoModel.from_pretrained("out") after import segcompass
    ```

    Not supported: a backbone that is already a ``PeftModel`` (pass ``peft_config`` instead), ``sync_ref_model``
    with PEFT, PEFT methods that cannot be merged (``merge_and_unload``; e.g. prompt tuning) for saving, vLLM /
    continuous batching, tools / environments / ``rollout_func``, and ``cast_lm_head_to_fp32`` with ``beta != 0``.
    Under DeepSpeed / FSDP the heads are not sharded and :meth:`_save` writes this process's parameters (untested).
    With PEFT, :meth:`supervised_warmup` trains the adapter and the heads; the KL anchor stays the base backbone.
    """

    _tag_names = ["trl", "grpo", "segcompass"]

    def __init__(
        self,
        model: SegCompassForReasoningSegmentation | str | os.PathLike,
        reward_funcs=None,
        args: SegCompassGRPOConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class: SegCompassProcessor | None = None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
    ):
        model, processing_class = load_model_and_processor(model, processing_class)
        args = check_grpo_args(args, model, peft_config)
        self._check_datasets(train_dataset, eval_dataset, args)
        reward_funcs = self._build_reward_functions(reward_funcs, args, model.config.duplicate_iou)
        prepare_model_for_grpo(model, args, processing_class)
        self.segcompass = model

        # Reference policy: a frozen copy of the initial backbone (TRL would reload config._name_or_path); with PEFT,
        # TRL disables the adapter instead (ref_model stays None).
        beta, sync_ref = args.beta, args.sync_ref_model
        ref_backbone = None
        if beta != 0.0 and peft_config is None:
            ref_backbone = copy.deepcopy(model.backbone).eval().requires_grad_(False)
        self._rollout: dict | None = None
        self._prompt_cache: dict | None = None
        self._shared_request: dict | None = None  # set by _compute_loss for _get_per_token_logps_and_entropies
        self._shared_output = None
        self._warned_inexact = False
        args.beta, args.sync_ref_model = 0.0, False
        try:
            super().__init__(model=model.backbone, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                             eval_dataset=eval_dataset, processing_class=processing_class, callbacks=callbacks,
                             optimizers=optimizers, peft_config=peft_config)
        finally:
            args.beta, args.sync_ref_model = beta, sync_ref
        self.beta = beta
        self._stop_at_ref_token(model.config.ref_token_id)
        if peft_config is not None:
            self._adopt_peft_backbone()
        if self.tools or self.environment_factories is not None or self.rollout_func is not None:
            raise ValueError("SegCompassGRPOTrainer does not support tools, environments or rollout_func.")
        if ref_backbone is not None:
            self._set_reference_policy(ref_backbone, sync_ref)
        self._place_heads()
        self._grid = (model.config.mask_size, model.config.mask_size)
        self._head_grads_synced = False
        self._ref_changed = False  # the reference policy differs from the initial backbone (warm-up / sync)
        self.add_callback(ZeroHeadGradients(self))

    # -------------------------------------------------------------------------------------------- construction
    @staticmethod
    def _check_datasets(train_dataset, eval_dataset, args: SegCompassGRPOConfig) -> None:
        """:func:`validate_grpo_dataset` on the training set and every evaluation set."""
        validate_grpo_dataset(train_dataset, "train_dataset", args.dataset_check_rows)
        if eval_dataset is not None:
            eval_sets = eval_dataset.items() if isinstance(eval_dataset, dict) else [("eval_dataset", eval_dataset)]
            for name, data in eval_sets:
                validate_grpo_dataset(data, str(name), args.dataset_check_rows)

    @staticmethod
    def _build_reward_functions(reward_funcs, args: SegCompassGRPOConfig, duplicate_iou: float | None = None) -> list:
        """Default ``[format_reward, mask_reward]`` weighted 0.3 / 0.7 (when ``args.reward_weights`` is None). A mask
        or segmentation reward without a keep threshold (``confidence_threshold=None``, the default) gets
        ``args.mask_confidence_threshold`` (the model's ``config.confidence_threshold`` unless set; filled in by
        :func:`check_grpo_args`) and the model's ``duplicate_iou`` through ``with_threshold`` (a copy); one with its
        own threshold keeps its rule."""
        if reward_funcs is None:
            reward_funcs = [format_reward, mask_reward]
            if args.reward_weights is None:
                args.reward_weights = [0.3, 0.7]
        if isinstance(reward_funcs, (list, tuple)):
            reward_funcs = [resolve_reward_threshold(f, args.mask_confidence_threshold, duplicate_iou)
                            for f in reward_funcs]
        else:
            reward_funcs = resolve_reward_threshold(reward_funcs, args.mask_confidence_threshold, duplicate_iou)
        return reward_funcs

    def _adopt_peft_backbone(self) -> None:
        """PEFT injects its layers into the backbone in place: the SegCompass forward (segmentation loss, rollout
        masks) runs the same adapted modules as TRL's policy. Keep ``segcompass.backbone`` = the PeftModel's base;
        the reference policy is the adapter-disabled backbone (``ref_model`` None)."""
        base = self.accelerator.unwrap_model(self.model).get_base_model()
        if base is not self.segcompass.backbone:
            self.segcompass.backbone = base
        self.ref_model = None

    def _set_reference_policy(self, ref_backbone: nn.Module, sync_ref: bool) -> None:
        """The frozen copy of the initial backbone as TRL's ``ref_model`` (fused LM head, optional sync callback)."""
        if self.args.disable_dropout:
            disable_dropout_in_model(ref_backbone)
        add_fused_lm_head(ref_backbone, temperature=self.temperature)
        self.ref_model = self.accelerator.prepare_model(ref_backbone.to(self.args.device), evaluation_mode=True)
        if sync_ref:
            self.add_callback(SyncRefModelCallback(ref_model=self.ref_model, accelerator=self.accelerator))

    def _place_heads(self) -> None:
        """The heads live outside TRL's model: move them along and mirror the dropout setting."""
        for name in ("sae", "vision_encoder", *_HEADS):
            getattr(self.segcompass, name).to(self.args.device)
        if self.args.disable_dropout:
            for name in _HEADS:
                disable_dropout_in_model(getattr(self.segcompass, name))

    # -------------------------------------------------------------------------------------------- rollout
    def _tokenize_prompts(self, prompts: list):
        """Tokenize the conversational prompts with the SegCompass processor (one image each).

        Returns TRL's ``(prompt_ids, images, multimodal_fields)``; the SAM inputs and the backbone image inputs are
        kept for the mask decoding in :meth:`_generate`.
        """
        if not is_conversational_prompt(prompts[0]):
            raise ValueError("SegCompass GRPO needs conversational prompts; build them with `prepare_grpo_dataset`.")
        prompts = [prepare_multimodal_messages(prompt) for prompt in prompts]
        images = []
        for i, prompt in enumerate(prompts):
            found = [part["image"] for message in prompt if isinstance(message.get("content"), list)
                     for part in message["content"] if part.get("type") == "image" and part.get("image") is not None]
            if len(found) != 1:
                raise ValueError(f"prompt {i} carries {len(found)} images; SegCompass takes exactly one per sample.")
            images.append(found)
        texts = [apply_chat_template({"prompt": p}, self.processing_class, **self.chat_template_kwargs)["prompt"]
                 for p in prompts]
        encoded = self.processing_class(images=images, text=texts, padding=True, return_tensors="pt")
        keep = encoded["attention_mask"].bool()
        prompt_ids = [row[m].tolist() for row, m in zip(encoded["input_ids"], keep)]
        fields: dict[str, Any] = {"pixel_values": encoded["pixel_values"]}
        if "image_grid_thw" in encoded:
            fields["image_grid_thw"] = encoded["image_grid_thw"]
        if "mm_token_type_ids" in encoded:
            fields["mm_token_type_ids"] = [row[m].tolist() for row, m in zip(encoded["mm_token_type_ids"], keep)]
        self._prompt_cache = {**{k: encoded[k] for k in _SAM_KEYS}, **fields}
        return prompt_ids, images, fields

    def _decode_completion(self, ids: Sequence[int]) -> str:
        """Decode keeping ``<REF_POS>`` (other special tokens are dropped, as TRL does)."""
        ref_id = self.segcompass.config.ref_token_id
        special = set(self._tokenizer.all_special_ids)
        return self._tokenizer.decode([t for t in ids if t == ref_id or t not in special], skip_special_tokens=False)

    def _head_mode(self, training: bool) -> None:
        for name in _HEADS:
            getattr(self.segcompass, name).train(training)
        self.segcompass.sae.eval()
        if self.args.freeze_vision_encoder:
            self.segcompass.vision_encoder.eval()

    def _generate(self, prompts: list):
        """TRL's generation, then a no-grad SegCompass scoring forward per completion: ``pred_masks`` /
        ``pred_confidences`` / ``pred_instance_limits`` go to the reward functions through ``extra_fields``."""
        (prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images,
         tool_images) = super()._generate(prompts)
        cache, self._prompt_cache = self._prompt_cache, None
        if cache is None:
            raise RuntimeError("SegCompassGRPOTrainer._generate: no tokenized prompts; TRL's call order changed.")
        device = self.accelerator.device
        scoring = scoring_inputs(self.segcompass, prompt_ids, completion_ids, self._tokenizer.pad_token_id,
                                 self.eos_token_ids, cache.get("mm_token_type_ids"))
        sam_pixel_values = cache["sam_pixel_values"].to(device)
        image_embeddings = sam_image_embeddings(self.segcompass, sam_pixel_values, self.accelerator.autocast)
        valid_sizes = self.segcompass.valid_mask_sizes(cache["reshaped_input_sizes"]).to(device)
        self._head_mode(False)
        try:
            masks, confidences, limits = decode_rollout_masks(  # (B, K, m, m), (B, K), B ints or None
                self.segcompass, scoring, cache, image_embeddings, valid_sizes,
                chunk=max(int(self.args.per_device_train_batch_size), 1), device=device,
                autocast=self.accelerator.autocast, sam_pixel_values=sam_pixel_values,
            )
        finally:
            self._head_mode(self.model.training)
        completions = [
            [{"role": "assistant", "content": self._decode_completion(ids)}] if isinstance(c, list)
            else self._decode_completion(ids)
            for c, ids in zip(completions, completion_ids)
        ]
        extra_fields = {
            **extra_fields,
            "pred_masks": [m.cpu() for m in masks],
            "pred_confidences": [c.cpu() for c in confidences],
            "pred_instance_limits": limits,
        }
        self._rollout = {
            "seg_input_ids": scoring["input_ids"].to(device),
            "seg_attention_mask": scoring["attention_mask"].to(device),
            "seg_image_embeddings": image_embeddings,
            "seg_sam_pixel_values": sam_pixel_values,
            "seg_valid_sizes": valid_sizes,
            "seg_malformed": scoring["malformed"],
            "pred_masks": masks,
            "pred_confidences": confidences,
            "pred_instance_limits": limits,
            "original_sizes": cache["original_sizes"],
        }
        if "mm_token_type_ids" in scoring:
            self._rollout["seg_mm_token_type_ids"] = scoring["mm_token_type_ids"].to(device)
        return prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images, tool_images

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """TRL's rollout + rewards, plus the tensors of the segmentation loss (first dimension B, so TRL shuffles and
        splits them with the rest): ``seg_input_ids`` / ``seg_attention_mask`` (``(B, T')``), ``seg_image_embeddings``
        (``(B, C, h, w)``), ``seg_valid_sizes`` (``(B, 2)``), ``seg_gt_masks`` (list of B ``(G_b, m, m)``)."""
        gt = rollout_targets(inputs, self._grid)  # B × (G_b, m, m)
        output = super()._generate_and_score_completions(inputs)
        rollout, self._rollout = self._rollout, None
        if rollout is None:
            raise RuntimeError("SegCompassGRPOTrainer: the rollout masks are missing; TRL's call order changed.")
        device = self.accelerator.device
        for key in ("seg_input_ids", "seg_attention_mask", "seg_image_embeddings", "seg_sam_pixel_values",
                    "seg_valid_sizes", "seg_mm_token_type_ids"):
            if key in rollout:
                output[key] = rollout[key]
        output["seg_gt_masks"] = [g.to(device) for g in gt]

        mode = "train" if self.model.training else "eval"
        valid = valid_region_mask(rollout["seg_valid_sizes"], self._grid)
        ious = [rollout_iou(rollout["pred_masks"][b], rollout["pred_confidences"][b], gt[b].to(device),
                            self.args.mask_confidence_threshold, valid[b], self.segcompass.config.duplicate_iou,
                            rollout["pred_instance_limits"][b])
                for b in range(len(gt))]
        iou = self.accelerator.gather(torch.tensor(ious, device=device)).mean().item()
        malformed = self.accelerator.gather(rollout["seg_malformed"].float().to(device)).mean().item()
        self._metrics[mode]["seg/rollout_iou"].append(iou)
        self._metrics[mode]["seg/malformed_ratio"].append(malformed)
        return output

    # -------------------------------------------------------------------------------------------- saving
    def _peft_policy(self):
        """The (unwrapped) ``PeftModel`` policy, or None without PEFT."""
        policy = self.accelerator.unwrap_model(self.model)
        return policy if is_peft_model(policy) else None

    def merged_segcompass(self) -> SegCompassForReasoningSegmentation:
        """The SegCompass model to save (:func:`.grpo_checkpoint.merged_segcompass`): ``self.segcompass`` without
        PEFT; with PEFT a copy with a merged backbone. The training model is not modified."""
        return grpo_checkpoint.merged_segcompass(self.segcompass, self._peft_policy())

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save the full SegCompass model (backbone + heads) and its processor, loadable with
        ``AutoModel.from_pretrained`` after ``import segcompass``. With PEFT the backbone is saved merged, and the
        adapter alone in ``<output_dir>/adapter`` (:func:`.grpo_checkpoint.save_segcompass`)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            logger.warning("DeepSpeed / FSDP: saving this process's SegCompass parameters as they are (not gathered).")
        grpo_checkpoint.save_segcompass(self.segcompass, output_dir, self._peft_policy(), self.processing_class)
        with atomic_path(os.path.join(output_dir, "training_args.bin")) as tmp:
            torch.save(self.args, tmp)

    # -------------------------------------------------------------------------------------------- resuming
    def _get_train_sampler(self, dataset=None):
        """TRL's sampler, made epoch-deterministic (:class:`_EpochRepeatSampler`) so that resuming at an epoch
        boundary sees the same prompt order as an uninterrupted run."""
        sampler = super()._get_train_sampler(dataset)
        if type(sampler) is RepeatSampler:
            sampler = _EpochRepeatSampler(sampler.data_source, sampler.mini_repeat_count, sampler.batch_size,
                                          sampler.repeat_count, sampler.shuffle, sampler.seed)
        return sampler

    def load_segcompass_checkpoint(self, checkpoint: str | os.PathLike) -> None:
        """Load the weights of a checkpoint written by :meth:`_save` into the training model, in place (see
        :func:`.grpo_checkpoint.load_segcompass_checkpoint`; with PEFT: the adapter and the heads).

        Raises:
            ValueError: a checkpoint that is not a SegCompass model directory, misses weights, or (PEFT) has no
                ``adapter/`` directory.
        """
        grpo_checkpoint.load_segcompass_checkpoint(self.segcompass, checkpoint, self._peft_policy())

    def _save_checkpoint(self, model, trial):
        """The Trainer's checkpoint (model via :meth:`_save`, optimizer, scheduler, RNG, state), plus the reference
        policy (``ref_model.safetensors``) when it is no longer the initial backbone (after :meth:`supervised_warmup`
        or with ``sync_ref_model``), so that a resumed run keeps the same KL anchor."""
        super()._save_checkpoint(model, trial)
        if self.ref_model is None or not self.args.should_save or not (self._ref_changed or self.args.sync_ref_model):
            return
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        grpo_checkpoint.save_reference_policy(self.accelerator.unwrap_model(self.ref_model), folder)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Restore the SegCompass weights (backbone + heads; adapter + heads with PEFT) and the reference policy from
        a checkpoint of :meth:`_save_checkpoint`. The Trainer itself restores the optimizer (all parameter groups,
        heads included), the LR scheduler, the global step and the RNG states."""
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            logger.warning("DeepSpeed / FSDP: SegCompass checkpoints are loaded as a whole model on every process.")
        self.load_segcompass_checkpoint(resume_from_checkpoint)
        reference = None if self.ref_model is None else self.accelerator.unwrap_model(self.ref_model)
        if grpo_checkpoint.load_reference_policy(reference, resume_from_checkpoint):
            self._ref_changed = True
        global_step = grpo_checkpoint.checkpoint_global_step(resume_from_checkpoint)
        if global_step is not None:  # TRL's micro-step counter (generation reuse, step-time logging)
            self._step = global_step * self.args.gradient_accumulation_steps

    def _load_best_model(self) -> None:
        """``load_best_model_at_end``: load the best SegCompass checkpoint (see :meth:`load_segcompass_checkpoint`)."""
        best = self.state.best_model_checkpoint
        logger.info("Loading best model from %s (score: %s).", best, self.state.best_metric)
        self.load_segcompass_checkpoint(best)

    def supervised_warmup(self, dataset=None, num_steps: int = 0, **kwargs) -> list[dict[str, float]]:
        """Run :func:`segcompass.training.sft.supervised_warmup` on this trainer's model and processor (default
        dataset: the training set) before GRPO, so the policy learns to emit ``<REF_POS>``. Returns the history."""
        from .sft import supervised_warmup

        kwargs.setdefault("learning_rate", self.args.learning_rate)
        kwargs.setdefault("multipliers", self._lr_multipliers())
        kwargs.setdefault("lambda_seg", self.args.lambda_seg)
        kwargs.setdefault("lambda_conf", self.args.lambda_conf)
        kwargs.setdefault("lambda_dice", self.args.lambda_dice)
        kwargs.setdefault("lambda_mask_bce", self.args.lambda_mask_bce)
        kwargs.setdefault("matching_source", self.args.matching_source)
        kwargs.setdefault("confidence_targets", self.args.confidence_targets)
        kwargs.setdefault("weight_decay", self.args.weight_decay)
        kwargs.setdefault("max_grad_norm", self.args.max_grad_norm)
        kwargs.setdefault("train_vision_encoder", not self.args.freeze_vision_encoder)
        history = supervised_warmup(self.segcompass, self.processing_class,
                                    dataset if dataset is not None else self.train_dataset, num_steps=num_steps,
                                    **kwargs)
        self.segcompass.train(self.model.training)
        if self.ref_model is not None and history:  # the KL anchor is the warmed-up policy
            reference = self.accelerator.unwrap_model(self.ref_model)
            reference.load_state_dict(self.accelerator.unwrap_model(self.model).state_dict())
            self._ref_changed = True
        return history
