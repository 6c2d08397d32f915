"""The optimisation side of the GRPO trainer: TRL trains only its policy (the backbone); the SegCompass heads join the
optimizer, the schedule, the gradient clipping and the gradient reset here. :class:`HeadOptimizationMixin` holds the
Trainer overrides (``create_optimizer``, ``create_scheduler``, ``_clip_grad_norm``, ``_get_grad_norm``; checked by
``tests/test_trl_contract.py``), mixed into [`SegCompassGRPOTrainer`] before ``GRPOTrainer``."""

from __future__ import annotations

import torch
from torch import nn
from transformers import TrainerCallback

from ..utils.logging import get_logger
from .optim import build_param_groups, one_cycle_scheduler

logger = get_logger(__name__)

__all__ = ["COMPONENTS", "HeadOptimizationMixin", "ZeroHeadGradients"]

COMPONENTS = (
    ("backbone", "backbone_lr_multiplier"),
    ("concept_interface", "codebook_lr_multiplier"),
    ("slot_mapper", "slot_mapper_lr_multiplier"),
    ("mask_decoder", "mask_decoder_lr_multiplier"),
)  # (component, config field of its lr multiplier)


class ZeroHeadGradients(TrainerCallback):
    """The Trainer zeroes only its model's (the backbone's) gradients after each optimizer step; the SegCompass heads
    are zeroed here, at the start of training and after every step."""

    def __init__(self, trainer):
        self.trainer = trainer

    def _zero(self) -> None:
        self.trainer.segcompass.zero_grad(set_to_none=True)
        self.trainer._head_grads_synced = False

    def on_train_begin(self, args, state, control, **kwargs):
        self._zero()

    def on_step_end(self, args, state, control, **kwargs):
        self._zero()


class HeadOptimizationMixin:
    """Trainer overrides that put the SegCompass heads (``self.segcompass``) into the optimisation of a TRL trainer."""

    def _lr_multipliers(self) -> dict[str, float]:
        return {name: float(getattr(self.args, attr)) for name, attr in COMPONENTS}

    def create_optimizer(self, model=None):
        """AdamW over the backbone and the SegCompass heads, one group per component with its lr multiplier
        (paper: ×25 codebook / concept interface, ×80 slot mapper, ×10 mask decoder)."""
        if self.optimizer is None:
            decay = {f"backbone.{n}" for n in self.get_decay_parameter_names(self.segcompass.backbone)}
            for name, _ in COMPONENTS[1:]:
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
