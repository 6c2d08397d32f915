"""SegCompassGRPOTrainer: GRPO on the reasoning policy with masks in the rewards and the segmentation losses in the
same backward (paper §3.3, eq. 6; DESIGN decision 7; dependency notes §4).

How it fits TRL 1.16's ``GRPOTrainer``:

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
* **Checkpoints and resuming** (``save_strategy``, ``train(resume_from_checkpoint=...)``): a ``checkpoint-N``
  holds the full SegCompass model as :meth:`_save` writes it (with PEFT: merged + ``adapter/``), the Trainer's
  ``optimizer.pt`` (every parameter group, heads included, in the fixed order of :meth:`create_optimizer`),
  ``scheduler.pt``, ``rng_state.pth`` and ``trainer_state.json``, plus ``ref_model.safetensors`` when the KL
  reference is no longer the initial backbone. :meth:`_load_from_checkpoint` / :meth:`_load_best_model` load the
  SegCompass weights in place (:meth:`load_segcompass_checkpoint`); the prompt order per epoch depends only on
  ``(seed, epoch)``, so with the restored RNG states a resumed run repeats the uninterrupted one (same rollouts,
  same weights). Resume with a trainer built like the original one (same initial model and ``peft_config``: with
  PEFT the frozen base backbone is not read from the checkpoint). Not restored: generations buffered across steps
  (``steps_per_generation`` / ``num_iterations`` > 1: resuming inside a generation block regenerates).
* **Rollout** (:meth:`_tokenize_prompts`, :meth:`_generate`): prompts are tokenized with [`SegCompassProcessor`]
  (which also gives SAM's inputs), the backbone samples the completions (slot tokens suppressed), and a no-grad
  SegCompass scoring forward (completion cut at its first ``<REF_POS>``, appended when missing, + the K slot tokens)
  decodes the K masks of every completion. They reach the reward functions as ``pred_masks`` (``(K, m, m)``
  probabilities on SAM's letterboxed frame) and ``pred_confidences`` (``(K,)`` probabilities). Completions are
  re-decoded keeping ``<REF_POS>`` (TRL strips special tokens), so the format reward can see it.
* **Loss** (:meth:`_generate_and_score_completions`, :meth:`_compute_loss`): the scoring inputs, SAM image keys and
  ground-truth masks on the m × m grid travel in the batch dict (shuffled and split with it); the policy loss of TRL
  plus ``λ_s · seg + λ_c · conf`` (:func:`segmentation_losses`) is returned, so one backward covers both.
  TODO: the segmentation loss runs a second backbone forward over the scoring sequence (prompt + completion cut at
  ``<REF_POS>`` + slot tokens). Capturing hidden states from TRL's policy forward with a hook (snippet E) would
  need the slot tokens inside the policy sequence; not done.

Dataset columns: ``prompt`` (conversational, one ``{"type": "image"}`` part; :func:`prepare_grpo_dataset` builds it
from ``instruction``), ``image``, ``masks`` (the SegCompass schema: list of COCO RLE at the image's resolution,
``[]`` for no target) and optionally ``no_target``.

Logged per step, besides TRL's metrics (``rewards/<fn>/mean`` per reward component, ``kl``, ``entropy`` ...):
``seg/loss``, ``seg/seg``, ``seg/bce``, ``seg/dice``, ``seg/conf``, ``seg/matched_iou``, ``seg/rollout_iou`` (mean IoU
of the rollouts' predicted masks, union of confident slots vs union of instances, on the mask grid) and
``seg/malformed_ratio`` (completions without ``<REF_POS>``).
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from accelerate.utils import is_peft_model
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.data_utils import apply_chat_template, is_conversational, prepare_multimodal_messages
from trl.trainer.callbacks import SyncRefModelCallback
from trl.trainer.utils import RepeatSampler, add_fused_lm_head, disable_dropout_in_model

from ..modeling_segcompass import SegCompassForReasoningSegmentation
from ..processing_segcompass import SegCompassProcessor
from ..utils.logging import get_logger
from .grpo_config import SegCompassGRPOConfig
from .freezing import freeze_backbone_through_hook_layer, train_token_embedding_rows
from .losses import segmentation_losses
from .rewards import format_reward, mask_reward
from .sft import (
    _image_size,
    _item_size,
    _mask_items,
    _valid_grid_mask,
    build_param_groups,
    ground_truth_on_grid,
)

logger = get_logger(__name__)

__all__ = [
    "REF_WEIGHTS_NAME",
    "REQUIRED_COLUMNS",
    "SegCompassGRPOTrainer",
    "build_param_groups",
    "ground_truth_on_grid",
    "one_cycle_scheduler",
    "prepare_grpo_dataset",
    "rollout_iou",
    "validate_grpo_dataset",
]

REQUIRED_COLUMNS = ("prompt", "image", "masks")
REF_WEIGHTS_NAME = "ref_model.safetensors"  # the KL reference policy, in checkpoints where it is not the initial one
_SAM_KEYS = ("sam_pixel_values", "original_sizes", "reshaped_input_sizes")
_COMPONENTS = (
    ("backbone", "backbone_lr_multiplier"),
    ("concept_interface", "codebook_lr_multiplier"),
    ("slot_mapper", "slot_mapper_lr_multiplier"),
    ("mask_decoder", "mask_decoder_lr_multiplier"),
)  # (component, config field of its lr multiplier)


# ------------------------------------------------------------------------------------------------ data helpers
def _check_row(row: dict, where: str) -> None:
    prompt = row.get("prompt")
    if not is_conversational({"prompt": prompt}):
        raise ValueError(
            f"{where}: `prompt` must be a conversational list of messages ([{{'role': 'user', 'content': [...]}}]), "
            f"got {type(prompt).__name__}. Build it with `prepare_grpo_dataset(dataset, processor)`."
        )
    image_size = _image_size(row.get("image"), where)
    for j, item in enumerate(_mask_items(row.get("masks"), where)):
        size = _item_size(item, f"{where} masks[{j}]")
        if size != image_size:
            raise ValueError(
                f"{where}: masks[{j}] has size {size} (H, W) but the image is {image_size}. Ground-truth masks must "
                "be at the image's original resolution: re-encode them at the image size, or fix the image."
            )


def validate_grpo_dataset(dataset, name: str = "train_dataset", max_rows: int | None = 256) -> None:
    """Check a GRPO dataset before TRL sees it: not empty, columns ``prompt``, ``image``, ``masks`` present,
    conversational prompts, and masks at each image's size (first ``max_rows`` rows; ``None``: all).

    Raises:
        ValueError: naming the dataset, the problem and the fix.
    """
    if dataset is None:
        raise ValueError(f"`{name}` is None; pass a datasets.Dataset with columns {list(REQUIRED_COLUMNS)}.")
    columns = getattr(dataset, "column_names", None)
    if columns is not None:
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            hint = (" Build `prompt` from the `instruction` column with `prepare_grpo_dataset(dataset, processor)`."
                    if "prompt" in missing and "instruction" in columns else "")
            raise ValueError(
                f"`{name}` is missing the column(s) {missing} (it has {list(columns)}); SegCompass GRPO needs "
                f"{list(REQUIRED_COLUMNS)} (+ optional `no_target`).{hint}"
            )
    if not hasattr(dataset, "__len__"):
        return  # an IterableDataset: rows are checked as they are used
    if len(dataset) == 0:
        raise ValueError(f"`{name}` is empty (0 rows); pass a dataset with at least one sample.")
    count = len(dataset) if max_rows is None else min(len(dataset), max_rows)
    for i in range(count):
        _check_row(dataset[i], f"{name}[{i}]")


def prepare_grpo_dataset(dataset, processor: SegCompassProcessor, instruction_column: str = "instruction"):
    """Add the conversational ``prompt`` column TRL needs (the processor's prompt template around each
    ``instruction``, one image placeholder that TRL fills from the ``image`` column). Other columns are kept.

    Returns:
        the mapped ``datasets.Dataset``.
    """
    columns = getattr(dataset, "column_names", None) or []
    if instruction_column not in columns:
        raise ValueError(
            f"The dataset has no `{instruction_column}` column (columns {columns}); pass `instruction_column=` naming "
            "the column that holds the referring expression / question."
        )

    def to_prompt(row):
        return {"prompt": processor.build_messages(row[instruction_column])}

    return dataset.map(to_prompt, desc="SegCompass GRPO prompts")


# ------------------------------------------------------------------------------------------------ optimizer groups
def _same_masks(a: Any, b: Any) -> bool:
    """Whether two rows' ``masks`` are the same annotation (identity, or equal RLE lists)."""
    if a is b:
        return True
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):  # arrays / tensors: ambiguous truth value
        return False


def _image_token_ids(processor: SegCompassProcessor) -> list[int]:
    """Ids of the backbone's image placeholder tokens (never to be sampled)."""
    tokenizer = processor.tokenizer
    names = [processor.image_token, "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"]
    ids = []
    for name in names:
        token_id = tokenizer.convert_tokens_to_ids(name)
        if token_id is not None and token_id != tokenizer.unk_token_id and token_id not in ids:
            ids.append(int(token_id))
    return ids


def one_cycle_scheduler(optimizer: torch.optim.Optimizer, num_training_steps: int, final_div_factor: float = 6.7,
                        warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """One-cycle schedule as a ``LambdaLR``: linear warm-up over ``warmup_steps`` (paper: none), then cosine
    annealing from each group's peak ``lr`` (reached at the first post-warm-up step) to ``lr / final_div_factor`` at
    the last step (``num_training_steps - 1``) and after."""
    total, warmup = max(int(num_training_steps), 1), max(int(warmup_steps), 0)
    floor = 1.0 / float(final_div_factor)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(max(step - warmup, 0) / max(total - warmup - 1, 1), 1.0)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _left_pad(rows: Sequence[Sequence[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of ids -> left-padded ``(B, T)`` ids and mask."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        if len(row):
            ids[b, width - len(row):] = torch.as_tensor(list(row), dtype=torch.long)
            mask[b, width - len(row):] = 1
    return ids, mask


def _right_pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), max(width, 1)), value, dtype=torch.long)
    for b, row in enumerate(rows):
        if len(row):
            ids[b, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
    return ids


def rollout_iou(pred_probs: torch.Tensor, confidences: torch.Tensor, gt: torch.Tensor, threshold: float = 0.5,
                valid: torch.Tensor | None = None) -> float:
    """IoU of one rollout: union of the slots with confidence ≥ ``threshold`` (pixels > 0.5) vs the union of the
    ground-truth instances (≥ 0.5); both empty = 1.

    Args:
        pred_probs (`(K, m, m)`), confidences (`(K,)`), gt (`(G, m, m)`), valid (`(m, m)` bool, optional).
    """
    keep = confidences >= threshold
    pred = (pred_probs[keep] > 0.5).any(0) if bool(keep.any()) else torch.zeros_like(pred_probs[0], dtype=torch.bool)
    target = (gt >= 0.5).any(0) if gt.shape[0] else torch.zeros_like(pred)
    if valid is not None:
        pred, target = pred & valid, target & valid
    union = (pred | target).sum()
    if int(union) == 0:
        return 1.0
    return float((pred & target).sum()) / float(union)


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
class _ZeroHeadGradients(TrainerCallback):
    """The Trainer zeroes only its model's (the backbone's) gradients after each optimizer step; the SegCompass heads
    are zeroed here, at the start of training and after every step."""

    def __init__(self, trainer: SegCompassGRPOTrainer):
        self.trainer = trainer

    def _zero(self) -> None:
        self.trainer.segcompass.zero_grad(set_to_none=True)
        self.trainer._head_grads_synced = False

    def on_train_begin(self, args, state, control, **kwargs):
        self._zero()

    def on_step_end(self, args, state, control, **kwargs):
        self._zero()


class SegCompassGRPOTrainer(GRPOTrainer):
    r"""GRPO for SegCompass: the backbone is TRL's policy; masks are decoded for every rollout and the supervised
    segmentation / confidence losses join the policy loss (see the module docstring).

    Args:
        model: a [`SegCompassForReasoningSegmentation`] or a path to one.
        reward_funcs: TRL reward functions; default ``[format_reward, mask_reward]`` with ``reward_weights`` 0.3 /
            0.7 (when ``args.reward_weights`` is None). They receive ``pred_masks``, ``pred_confidences`` and the
            dataset columns (``masks`` ...) as keyword arguments.
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
        if isinstance(model, (str, os.PathLike)):
            model = SegCompassForReasoningSegmentation.from_pretrained(model)
            if processing_class is None:
                processing_class = SegCompassProcessor.from_pretrained(model.config._name_or_path)
        if not isinstance(model, SegCompassForReasoningSegmentation):
            raise ValueError(
                "`model` must be a SegCompassForReasoningSegmentation (or a path to one), got "
                f"{type(model).__name__}. For a plain VLM use trl.GRPOTrainer."
            )
        if processing_class is None:
            source = model.config._name_or_path
            if not source or not os.path.isdir(source):
                raise ValueError(
                    "Pass `processing_class=SegCompassProcessor.from_pretrained(...)`: the model was not loaded "
                    "from a directory holding its processor."
                )
            processing_class = SegCompassProcessor.from_pretrained(source)
        if not isinstance(processing_class, SegCompassProcessor):
            raise ValueError(
                f"`processing_class` must be a SegCompassProcessor, got {type(processing_class).__name__}; it builds "
                "the SAM inputs and the prompt template the model was trained with."
            )
        if list(processing_class.slot_token_ids) != list(model.config.slot_token_ids or []) or (
            processing_class.ref_token_id != model.config.ref_token_id
        ):
            raise ValueError(
                f"The processor's special tokens (<REF_POS>={processing_class.ref_token_id}, slots="
                f"{list(processing_class.slot_token_ids)}) differ from the model config's "
                f"({model.config.ref_token_id}, {model.config.slot_token_ids}); load the processor saved with this "
                "model."
            )
        if args is None:
            args = SegCompassGRPOConfig(output_dir="segcompass-grpo")
        if not isinstance(args, SegCompassGRPOConfig):
            raise ValueError(
                f"`args` must be a SegCompassGRPOConfig, got {type(args).__name__}; it carries the loss weights and "
                "learning-rate multipliers (`SegCompassGRPOConfig(**your_grpo_config.to_dict())`)."
            )
        if args.cast_lm_head_to_fp32 and args.beta != 0.0:
            raise ValueError(
                "`cast_lm_head_to_fp32=True` with beta != 0 is not supported by SegCompassGRPOTrainer (its reference "
                "model is a copy of the backbone); set cast_lm_head_to_fp32=False."
            )
        if peft_config is not None:
            if is_peft_model(model.backbone):
                raise ValueError(
                    "The backbone is already a PeftModel; pass a plain SegCompass model together with `peft_config`."
                )
            if args.sync_ref_model:
                raise ValueError(
                    "`sync_ref_model=True` is not supported with `peft_config`: the reference policy is the backbone "
                    "with the adapter disabled. Set sync_ref_model=False."
                )
        if args.use_vllm or getattr(args, "use_transformers_continuous_batching", False):
            raise ValueError("SegCompassGRPOTrainer supports transformers generation only; set use_vllm=False.")
        validate_grpo_dataset(train_dataset, "train_dataset", args.dataset_check_rows)
        if eval_dataset is not None:
            eval_sets = eval_dataset.items() if isinstance(eval_dataset, dict) else [("eval_dataset", eval_dataset)]
            for name, data in eval_sets:
                validate_grpo_dataset(data, str(name), args.dataset_check_rows)
        if reward_funcs is None:
            reward_funcs = [format_reward, mask_reward]
            if args.reward_weights is None:
                args.reward_weights = [0.3, 0.7]

        self.segcompass = model
        self._slot_ids = list(model.config.slot_token_ids)
        model.sae.requires_grad_(False)
        if args.freeze_vision_encoder:
            model.vision_encoder.requires_grad_(False)
        if args.freeze_backbone_through_hook_layer:
            freeze_backbone_through_hook_layer(model)
        if args.train_slot_token_embeddings:
            train_token_embedding_rows(model)
        # Slot tokens are teacher-forced after the answer, never sampled; image placeholders in a completion would
        # break the backbone's image-feature alignment.
        generation_kwargs = dict(args.generation_kwargs or {})
        suppressed = list(generation_kwargs.get("suppress_tokens") or [])
        suppressed += [t for t in self._slot_ids + _image_token_ids(processing_class) if t not in suppressed]
        generation_kwargs["suppress_tokens"] = suppressed
        args.generation_kwargs = generation_kwargs

        # Reference policy: a frozen copy of the initial backbone (TRL would reload config._name_or_path); with PEFT,
        # TRL disables the adapter instead (ref_model stays None).
        beta, sync_ref = args.beta, args.sync_ref_model
        ref_backbone = None
        if beta != 0.0 and peft_config is None:
            ref_backbone = copy.deepcopy(model.backbone).eval().requires_grad_(False)
        self._rollout: dict | None = None
        self._prompt_cache: dict | None = None
        args.beta, args.sync_ref_model = 0.0, False
        try:
            super().__init__(
                model=model.backbone,
                reward_funcs=reward_funcs,
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                callbacks=callbacks,
                optimizers=optimizers,
                peft_config=peft_config,
            )
        finally:
            args.beta, args.sync_ref_model = beta, sync_ref
        self.beta = beta
        if peft_config is not None:
            # PEFT injects its layers into the backbone in place: the SegCompass forward (segmentation loss, rollout
            # masks) runs the same adapted modules as TRL's policy. Keep `segcompass.backbone` = the PeftModel's base.
            base = self.accelerator.unwrap_model(self.model).get_base_model()
            if base is not model.backbone:
                model.backbone = base
            self.ref_model = None
        if self.tools or self.environment_factories is not None or self.rollout_func is not None:
            raise ValueError("SegCompassGRPOTrainer does not support tools, environments or rollout_func.")
        if ref_backbone is not None:
            if args.disable_dropout:
                disable_dropout_in_model(ref_backbone)
            add_fused_lm_head(ref_backbone, temperature=self.temperature)
            self.ref_model = self.accelerator.prepare_model(ref_backbone.to(self.args.device), evaluation_mode=True)
            if sync_ref:
                self.add_callback(SyncRefModelCallback(ref_model=self.ref_model, accelerator=self.accelerator))
        # The heads live outside TRL's model: move them along and mirror the dropout setting.
        for name in ("sae", "concept_interface", "slot_mapper", "vision_encoder", "mask_decoder"):
            getattr(model, name).to(self.args.device)
        if args.disable_dropout:
            for name in ("concept_interface", "slot_mapper", "mask_decoder"):
                disable_dropout_in_model(getattr(model, name))
        self._grid = (model.config.mask_size, model.config.mask_size)
        self._head_grads_synced = False
        self._ref_changed = False  # the reference policy differs from the initial backbone (warm-up / sync)
        self.add_callback(_ZeroHeadGradients(self))

    # -------------------------------------------------------------------------------------------- optimizer
    def _lr_multipliers(self) -> dict[str, float]:
        return {name: float(getattr(self.args, attr)) for name, attr in _COMPONENTS}

    def create_optimizer(self, model=None):
        """AdamW over the backbone and the SegCompass heads, one group per component with its lr multiplier
        (paper: ×25 codebook / concept interface, ×80 slot mapper, ×10 mask decoder)."""
        if self.optimizer is None:
            decay = {f"backbone.{n}" for n in self.get_decay_parameter_names(self.segcompass.backbone)}
            for name, _ in _COMPONENTS[1:]:
                decay |= {f"{name}.{n}" for n in self.get_decay_parameter_names(getattr(self.segcompass, name))}
            if not self.args.freeze_vision_encoder:
                names = self.get_decay_parameter_names(self.segcompass.vision_encoder)
                decay |= {f"vision_encoder.{n}" for n in names}
            groups = build_param_groups(
                self.segcompass, self.args.learning_rate, self.args.weight_decay, self._lr_multipliers(),
                train_vision_encoder=not self.args.freeze_vision_encoder, decay_parameter_names=decay,
            )
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.segcompass)
            optimizer_kwargs.pop("lr", None)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            for group in groups:
                logger.info("param group %s: %d tensors, lr %.3g", group["name"], len(group["params"]), group["lr"])
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The one-cycle schedule (``use_one_cycle_schedule``, :func:`one_cycle_scheduler`) or the Trainer's
        ``lr_scheduler_type``."""
        if not self.args.use_one_cycle_schedule:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            optimizer = optimizer if optimizer is not None else self.optimizer
            self.lr_scheduler = one_cycle_scheduler(
                optimizer, num_training_steps, self.args.one_cycle_final_div_factor,
                self.args.get_warmup_steps(num_training_steps),
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def _trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.segcompass.parameters() if p.requires_grad]

    def _head_parameters(self) -> list[nn.Parameter]:
        backbone = {id(p) for p in self.segcompass.backbone.parameters()}
        return [p for p in self._trainable_parameters() if id(p) not in backbone]

    def _sync_head_gradients(self) -> None:
        """Average the heads' gradients across processes once per optimizer step (the heads live outside the
        DDP-wrapped policy, so DDP does not reduce them)."""
        if self._head_grads_synced or self.accelerator.num_processes == 1:
            return
        import torch.distributed as dist

        for param in self._head_parameters():
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad.div_(self.accelerator.num_processes)
        self._head_grads_synced = True

    def _clip_grad_norm(self, model):
        """Clip the gradients of every trainable SegCompass parameter (backbone and heads) together."""
        self._sync_head_gradients()
        return self.accelerator.clip_grad_norm_(self._trainable_parameters(), self.args.max_grad_norm)

    def _get_grad_norm(self, model, grad_norm=None):
        self._sync_head_gradients()
        if grad_norm is None:
            grad_norm = self.accelerator.clip_grad_norm_(self._trainable_parameters(), float("inf"))
        return grad_norm.item() if hasattr(grad_norm, "item") else grad_norm

    # -------------------------------------------------------------------------------------------- rollout
    def _tokenize_prompts(self, prompts: list):
        """Tokenize the conversational prompts with the SegCompass processor (one image each).

        Returns TRL's ``(prompt_ids, images, multimodal_fields)``; the SAM inputs and the backbone image inputs are
        kept for the mask decoding in :meth:`_generate`.
        """
        if not is_conversational({"prompt": prompts[0]}):
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

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args,
                                           sam_pixel_values=None, original_sizes=None, reshaped_input_sizes=None,
                                           **kwargs):
        """TRL's log-probabilities; drops the SAM inputs that the SegCompass processor adds to TRL's
        ``forward_kwargs`` (the policy is the backbone alone)."""
        return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, *args,
                                                          **kwargs)

    def _decode_completion(self, ids: Sequence[int]) -> str:
        """Decode keeping ``<REF_POS>`` (other special tokens are dropped, as TRL does)."""
        ref_id = self.segcompass.config.ref_token_id
        special = set(self._tokenizer.all_special_ids)
        return self._tokenizer.decode([t for t in ids if t == ref_id or t not in special], skip_special_tokens=False)

    def _backbone_image_kwargs(self, fields: dict, start: int, end: int) -> dict:
        """Slice the backbone image inputs of rows [start, end) (one image per row)."""
        pixel_values = fields["pixel_values"]
        grid = fields.get("image_grid_thw")
        if grid is None:
            return {"pixel_values": pixel_values[start:end]}
        rows = grid.prod(-1).cumsum(0).tolist()
        first = 0 if start == 0 else int(rows[start - 1])
        return {"pixel_values": pixel_values[first: int(rows[end - 1])], "image_grid_thw": grid[start:end]}

    def _head_mode(self, training: bool) -> None:
        for name in ("concept_interface", "slot_mapper", "mask_decoder"):
            getattr(self.segcompass, name).train(training)
        self.segcompass.sae.eval()
        if self.args.freeze_vision_encoder:
            self.segcompass.vision_encoder.eval()

    @torch.no_grad()
    def _image_embeddings(self, sam_pixel_values: torch.Tensor) -> torch.Tensor:
        """SAM image keys ``(B, C, h, w)``, encoding consecutive duplicates (the G rollouts of a prompt) once."""
        encoder = self.segcompass.vision_encoder
        was_training = encoder.training
        encoder.eval()
        out, cache = [], None
        for row in sam_pixel_values:
            if cache is None or not torch.equal(cache[0], row):
                with self.accelerator.autocast():
                    cache = (row, self.segcompass.get_image_embeddings(row[None]).float())
            out.append(cache[1])
        encoder.train(was_training)
        return torch.cat(out)

    def _generate(self, prompts: list):
        """TRL's generation, then a no-grad SegCompass scoring forward per completion: ``pred_masks`` /
        ``pred_confidences`` go to the reward functions through ``extra_fields``."""
        (prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images,
         tool_images) = super()._generate(prompts)
        cache, self._prompt_cache = self._prompt_cache, None
        if cache is None:
            raise RuntimeError("SegCompassGRPOTrainer._generate: no tokenized prompts; TRL's call order changed.")
        device = self.accelerator.device
        pad_id = self._tokenizer.pad_token_id
        prompt_tensor, prompt_mask = _left_pad(prompt_ids, pad_id)
        completion_tensor = _right_pad(completion_ids, pad_id)
        mm = None
        if "mm_token_type_ids" in cache:
            mm, _ = _left_pad(cache["mm_token_type_ids"], 0)
        scoring = self.segcompass.build_scoring_inputs(
            prompt_tensor, prompt_mask, completion_tensor, pad_id, list(self.eos_token_ids), mm
        )
        sam_pixel_values = cache["sam_pixel_values"].to(device)
        image_embeddings = self._image_embeddings(sam_pixel_values)
        valid_sizes = self.processing_class.valid_mask_sizes(cache["reshaped_input_sizes"], self._grid).to(device)
        batch = prompt_tensor.shape[0]
        chunk = max(int(self.args.per_device_train_batch_size), 1)
        masks, confidences = [], []
        self._head_mode(False)
        try:
            with torch.no_grad():
                for start in range(0, batch, chunk):
                    end = min(start + chunk, batch)
                    kwargs = {k: v.to(device) for k, v in self._backbone_image_kwargs(cache, start, end).items()}
                    if "mm_token_type_ids" in scoring:
                        kwargs["mm_token_type_ids"] = scoring["mm_token_type_ids"][start:end].to(device)
                    with self.accelerator.autocast():
                        out = self.segcompass(
                            input_ids=scoring["input_ids"][start:end].to(device),
                            attention_mask=scoring["attention_mask"][start:end].to(device),
                            image_embeddings=image_embeddings[start:end],
                            valid_mask_sizes=valid_sizes[start:end], **kwargs,
                        )
                    masks.append(out.mask_logits.float().sigmoid())
                    confidences.append(out.confidence_logits.float().sigmoid())
        finally:
            self._head_mode(self.model.training)
        masks, confidences = torch.cat(masks), torch.cat(confidences)
        completions = [
            [{"role": "assistant", "content": self._decode_completion(ids)}] if isinstance(c, list)
            else self._decode_completion(ids)
            for c, ids in zip(completions, completion_ids)
        ]
        extra_fields = {
            **extra_fields,
            "pred_masks": [m.cpu() for m in masks],
            "pred_confidences": [c.cpu() for c in confidences],
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
            "original_sizes": cache["original_sizes"],
        }
        if "mm_token_type_ids" in scoring:
            self._rollout["seg_mm_token_type_ids"] = scoring["mm_token_type_ids"].to(device)
        return prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images, tool_images

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """TRL's rollout + rewards, plus the tensors of the segmentation loss (first dimension B, so TRL shuffles and
        splits them with the rest): ``seg_input_ids`` / ``seg_attention_mask`` (``(B, T')``), ``seg_image_embeddings``
        (``(B, C, h, w)``), ``seg_valid_sizes`` (``(B, 2)``), ``seg_gt_masks`` (list of B ``(G_b, m, m)``)."""
        for i, row in enumerate(inputs):
            missing = [c for c in ("prompt", "image", "masks") if c not in row]
            if missing:
                raise ValueError(f"batch row {i} lacks the column(s) {missing}; SegCompass GRPO needs "
                                 f"{list(REQUIRED_COLUMNS)}.")
        gt, previous = [], None  # the G rollouts of a prompt are consecutive rows: decode their masks once
        for i, row in enumerate(inputs):
            size = _image_size(row["image"], f"row {i}")
            if previous is None or previous[0] != size or not _same_masks(previous[1], row["masks"]):
                previous = (size, row["masks"], ground_truth_on_grid(row["masks"], size, self._grid, f"row {i}"))
            gt.append(previous[2])
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
        valid = _valid_grid_mask(rollout["seg_valid_sizes"], self._grid)
        ious = [rollout_iou(rollout["pred_masks"][b], rollout["pred_confidences"][b], gt[b].to(device),
                            self.args.mask_confidence_threshold, valid[b]) for b in range(len(gt))]
        iou = self.accelerator.gather(torch.tensor(ious, device=device)).mean().item()
        malformed = self.accelerator.gather(rollout["seg_malformed"].float().to(device)).mean().item()
        self._metrics[mode]["seg/rollout_iou"].append(iou)
        self._metrics[mode]["seg/malformed_ratio"].append(malformed)
        return output

    # -------------------------------------------------------------------------------------------- loss
    def segmentation_forward(self, inputs: dict[str, Any]):
        """The SegCompass forward (with gradients) on the batch's scoring sequences: returns
        ``(SegCompassOutput, SegmentationLossOutput)``."""
        batch = inputs["seg_input_ids"].shape[0]
        kwargs = {}
        if inputs.get("pixel_values") is not None:
            fields = {"pixel_values": inputs["pixel_values"], "image_grid_thw": inputs.get("image_grid_thw")}
            kwargs = self._backbone_image_kwargs(fields, 0, batch)
        if "seg_mm_token_type_ids" in inputs:
            kwargs["mm_token_type_ids"] = inputs["seg_mm_token_type_ids"]
        self._head_mode(self.model.training)
        image_embeddings = inputs["seg_image_embeddings"]
        with self.accelerator.autocast():
            if not self.args.freeze_vision_encoder:  # the rollout's keys have no graph: recompute with gradients
                image_embeddings = self.segcompass.get_image_embeddings(inputs["seg_sam_pixel_values"])
            out = self.segcompass(
                input_ids=inputs["seg_input_ids"], attention_mask=inputs["seg_attention_mask"],
                image_embeddings=image_embeddings, valid_mask_sizes=inputs["seg_valid_sizes"], **kwargs,
            )
        losses = segmentation_losses(
            out.heatmap_logits.float(), out.mask_logits.float(), out.confidence_logits.float(),
            list(inputs["seg_gt_masks"]), lambda_seg=self.args.lambda_seg, lambda_conf=self.args.lambda_conf,
            lambda_dice=self.args.lambda_dice, valid_mask=_valid_grid_mask(inputs["seg_valid_sizes"], self._grid),
        )
        return out, losses

    def _compute_loss(self, model, inputs):
        """TRL's GRPO loss + ``λ_s · seg + λ_c · conf`` (scaled like TRL's loss for gradient accumulation)."""
        loss = super()._compute_loss(model, inputs)
        _, losses = self.segmentation_forward(inputs)
        mode = "train" if self.model.training else "eval"
        scale = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        for name, value in losses.metrics().items():
            if name == "num_matched":
                continue
            self._metrics[mode][f"seg/{name}"].append(value)
        return loss + losses.loss.to(loss.dtype) / scale

    # -------------------------------------------------------------------------------------------- saving
    def _peft_policy(self):
        """The (unwrapped) ``PeftModel`` policy, or None without PEFT."""
        policy = self.accelerator.unwrap_model(self.model)
        return policy if is_peft_model(policy) else None

    def merged_segcompass(self) -> SegCompassForReasoningSegmentation:
        """The SegCompass model to save: ``self.segcompass`` itself without PEFT; with PEFT a shallow copy whose
        backbone is a merged deep copy of the adapted backbone (``merge_and_unload``), the heads shared. The
        training model is not modified."""
        policy = self._peft_policy()
        if policy is None:
            return self.segcompass
        with torch.no_grad():
            merged = copy.deepcopy(policy).merge_and_unload()
        if "forward" in vars(merged):  # TRL's fused LM head patch: not part of the saved model
            del merged.forward
        model = copy.copy(self.segcompass)
        model._modules = dict(self.segcompass._modules)
        model._modules["backbone"] = merged
        return model

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save the full SegCompass model (backbone + heads) and its processor, loadable with
        ``AutoModel.from_pretrained`` after ``import segcompass``. With PEFT the backbone is saved merged, and the
        adapter alone in ``<output_dir>/adapter``."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            logger.warning("DeepSpeed / FSDP: saving this process's SegCompass parameters as they are (not gathered).")
        os.makedirs(output_dir, exist_ok=True)
        logger.info("Saving SegCompass checkpoint to %s", output_dir)
        policy = self._peft_policy()
        if policy is None:
            self.segcompass.save_pretrained(output_dir)
        else:
            merged = self.merged_segcompass()
            merged.save_pretrained(output_dir)
            del merged
            policy.save_pretrained(os.path.join(output_dir, "adapter"))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

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
        """Load the weights of a checkpoint written by :meth:`_save` into the training model, in place (parameter
        identities are kept, so an optimizer built over them stays valid).

        Without PEFT the whole SegCompass state (backbone + heads) is loaded. With PEFT the adapter comes from
        ``<checkpoint>/adapter`` (into the wrapped backbone) and the heads from the top-level (merged) weights; the
        frozen base backbone is the one this trainer was built with (the merged backbone weights are not unmerged).
        The checkpoint is read with ``from_pretrained`` (handles shards and the backbone's saved key layout), so it
        is briefly held twice in CPU memory.

        Raises:
            ValueError: a checkpoint that is not a SegCompass model directory, misses weights, or (PEFT) has no
                ``adapter/`` directory.
        """
        checkpoint = os.fspath(checkpoint)
        if not os.path.isfile(os.path.join(checkpoint, "config.json")):
            raise ValueError(f"{checkpoint} is not a SegCompass checkpoint directory (no config.json).")
        policy = self._peft_policy()
        adapter_dir = os.path.join(checkpoint, "adapter")
        if policy is not None and not os.path.isfile(os.path.join(adapter_dir, "adapter_config.json")):
            raise ValueError(
                f"{checkpoint} has no adapter/ directory but this trainer trains a PEFT adapter; resume a checkpoint "
                "written with the same `peft_config`."
            )
        logger.info("Loading SegCompass weights from %s", checkpoint)
        loaded = SegCompassForReasoningSegmentation.from_pretrained(checkpoint)
        state = loaded.state_dict()
        del loaded
        own = self.segcompass.state_dict()
        if policy is None:
            wanted = set(own)
        else:
            wanted = {k for k in own if not k.startswith("backbone.")}
            state = {k: v for k, v in state.items() if not k.startswith("backbone.")}
        missing = sorted(wanted - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"{checkpoint} does not match this model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} (different config?)."
            )
        with torch.no_grad():
            self.segcompass.load_state_dict(state, strict=False)
        del state
        if policy is not None:
            from peft.utils import load_peft_weights, set_peft_model_state_dict

            adapter_name = policy.active_adapter
            weights = load_peft_weights(adapter_dir, device="cpu")
            result = set_peft_model_state_dict(policy, weights, adapter_name=adapter_name)
            if getattr(result, "unexpected_keys", None):
                raise ValueError(f"{adapter_dir}: adapter weights that match no LoRA layer: "
                                 f"{result.unexpected_keys[:5]} (different peft_config?).")

    def _save_checkpoint(self, model, trial):
        """The Trainer's checkpoint (model via :meth:`_save`, optimizer, scheduler, RNG, state), plus the reference
        policy (``ref_model.safetensors``) when it is no longer the initial backbone (after :meth:`supervised_warmup`
        or with ``sync_ref_model``), so that a resumed run keeps the same KL anchor."""
        super()._save_checkpoint(model, trial)
        if self.ref_model is None or not self.args.should_save or not (self._ref_changed or self.args.sync_ref_model):
            return
        from safetensors.torch import save_model

        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if os.path.isdir(folder):
            save_model(self.accelerator.unwrap_model(self.ref_model), os.path.join(folder, REF_WEIGHTS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Restore the SegCompass weights (backbone + heads; adapter + heads with PEFT) from a checkpoint of
        :meth:`_save`. The Trainer itself restores the optimizer (all parameter groups, heads included), the LR
        scheduler, the global step and the RNG states."""
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            logger.warning("DeepSpeed / FSDP: SegCompass checkpoints are loaded as a whole model on every process.")
        self.load_segcompass_checkpoint(resume_from_checkpoint)
        ref_file = os.path.join(resume_from_checkpoint, REF_WEIGHTS_NAME)
        if os.path.isfile(ref_file):
            if self.ref_model is None:
                logger.info("%s: no reference model in this trainer (PEFT or beta = 0); ignored.", ref_file)
            else:
                from safetensors.torch import load_model

                load_model(self.accelerator.unwrap_model(self.ref_model), ref_file, strict=True)
                self._ref_changed = True
        state_file = os.path.join(resume_from_checkpoint, "trainer_state.json")
        if os.path.isfile(state_file):  # TRL's micro-step counter (generation reuse, step-time logging)
            with open(state_file) as f:
                global_step = int(json.load(f).get("global_step", 0))
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
