"""Checkpoints of SegCompass GRPO: what :class:`~segcompass.training.grpo_trainer.SegCompassGRPOTrainer` writes
and reads besides the Trainer's own files.

A ``checkpoint-N`` holds the full SegCompass model as :func:`save_segcompass` writes it (loadable with
``AutoModel.from_pretrained`` after ``import segcompass``; with PEFT the backbone merged, plus the adapter alone in
``adapter/``), the Trainer's ``optimizer.pt`` (every parameter group, heads included, in the fixed order of the
trainer's ``create_optimizer``), ``scheduler.pt``, ``rng_state.pth`` and ``trainer_state.json``, plus
:data:`REF_WEIGHTS_NAME` when the KL reference is no longer the initial backbone. :func:`load_segcompass_checkpoint`
loads the SegCompass weights in place; the prompt order per epoch depends only on ``(seed, epoch)``, so with the
restored RNG states a resumed run repeats the uninterrupted one (same rollouts, same weights). Resume with a trainer
built like the original one (same initial model and ``peft_config``: with PEFT the frozen base backbone is not read
from the checkpoint). Not restored: generations buffered across steps (``steps_per_generation`` /
``num_iterations`` > 1: resuming inside a generation block regenerates).

Imports no ``trl``.
"""

from __future__ import annotations

import copy
import json
import os

import torch
from torch import nn

from ..modeling_segcompass import SegCompassForReasoningSegmentation
from ..utils.io import save_pretrained_atomic
from ..utils.logging import get_logger

logger = get_logger(__name__)

__all__ = [
    "REF_WEIGHTS_NAME",
    "checkpoint_global_step",
    "load_reference_policy",
    "load_segcompass_checkpoint",
    "merged_segcompass",
    "save_reference_policy",
    "save_segcompass",
]

REF_WEIGHTS_NAME = "ref_model.safetensors"  # the KL reference policy, in checkpoints where it is not the initial one


def merged_segcompass(segcompass: SegCompassForReasoningSegmentation, policy=None) -> SegCompassForReasoningSegmentation:
    """The SegCompass model to save: ``segcompass`` itself without PEFT (``policy`` None); with PEFT (``policy`` the
    unwrapped ``PeftModel`` around its backbone) a shallow copy whose backbone is a merged deep copy of the adapted
    backbone (``merge_and_unload``), the heads shared. The training model is not modified."""
    if policy is None:
        return segcompass
    with torch.no_grad():
        merged = copy.deepcopy(policy).merge_and_unload()
    if "forward" in vars(merged):  # TRL's fused LM head patch: not part of the saved model
        del merged.forward
    model = copy.copy(segcompass)
    model._modules = dict(segcompass._modules)
    model._modules["backbone"] = merged
    return model


def save_segcompass(segcompass: SegCompassForReasoningSegmentation, output_dir: str, policy=None,
                    processor=None) -> None:
    """Write the full SegCompass model (backbone + heads) and its ``processor`` to ``output_dir``. With PEFT
    (``policy`` the ``PeftModel``) the backbone is saved merged (:func:`merged_segcompass`) and the adapter alone in
    ``<output_dir>/adapter``."""
    os.makedirs(output_dir, exist_ok=True)
    logger.info("Saving SegCompass checkpoint to %s", output_dir)
    if policy is None:
        save_pretrained_atomic(segcompass, output_dir)
    else:
        merged = merged_segcompass(segcompass, policy)
        save_pretrained_atomic(merged, output_dir)
        del merged
        save_pretrained_atomic(policy, os.path.join(output_dir, "adapter"))
    if processor is not None:
        save_pretrained_atomic(processor, output_dir)


def load_segcompass_checkpoint(segcompass: SegCompassForReasoningSegmentation, checkpoint: str | os.PathLike,
                               policy=None) -> None:
    """Load the weights of a checkpoint written by :func:`save_segcompass` into ``segcompass``, in place (parameter
    identities are kept, so an optimizer built over them stays valid).

    Without PEFT (``policy`` None) the whole SegCompass state (backbone + heads) is loaded. With PEFT the adapter
    comes from ``<checkpoint>/adapter`` (into ``policy``, the wrapped backbone) and the heads from the top-level
    (merged) weights; the frozen base backbone stays the one in memory (the merged backbone weights are not
    unmerged). The checkpoint is read with ``from_pretrained`` (handles shards and the backbone's saved key layout),
    so it is briefly held twice in CPU memory.

    Raises:
        ValueError: a checkpoint that is not a SegCompass model directory, misses weights, or (PEFT) has no
            ``adapter/`` directory.
    """
    checkpoint = os.fspath(checkpoint)
    if not os.path.isfile(os.path.join(checkpoint, "config.json")):
        raise ValueError(f"{checkpoint} is not a SegCompass checkpoint directory (no config.json).")
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
    own = segcompass.state_dict()
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
        segcompass.load_state_dict(state, strict=False)
    del state
    if policy is not None:
        from peft.utils import load_peft_weights, set_peft_model_state_dict

        weights = load_peft_weights(adapter_dir, device="cpu")
        result = set_peft_model_state_dict(policy, weights, adapter_name=policy.active_adapter)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"{adapter_dir}: adapter weights that match no LoRA layer: "
                             f"{result.unexpected_keys[:5]} (different peft_config?).")


def save_reference_policy(reference: nn.Module, checkpoint: str) -> None:
    """Write the KL reference policy (unwrapped) as ``<checkpoint>/`` :data:`REF_WEIGHTS_NAME`, when that
    checkpoint directory exists."""
    if os.path.isdir(checkpoint):
        from safetensors.torch import save_model

        save_model(reference, os.path.join(checkpoint, REF_WEIGHTS_NAME))


def load_reference_policy(reference: nn.Module | None, checkpoint: str) -> bool:
    """Load ``<checkpoint>/`` :data:`REF_WEIGHTS_NAME` into the (unwrapped) reference policy, strictly. Returns
    whether it was loaded: False without that file, or without a reference policy (PEFT or beta = 0; logged)."""
    ref_file = os.path.join(checkpoint, REF_WEIGHTS_NAME)
    if not os.path.isfile(ref_file):
        return False
    if reference is None:
        logger.info("%s: no reference model in this trainer (PEFT or beta = 0); ignored.", ref_file)
        return False
    from safetensors.torch import load_model

    load_model(reference, ref_file, strict=True)
    return True


def checkpoint_global_step(checkpoint: str) -> int | None:
    """The ``global_step`` of a checkpoint's ``trainer_state.json`` (0 when unset), or None without that file."""
    state_file = os.path.join(checkpoint, "trainer_state.json")
    if not os.path.isfile(state_file):
        return None
    with open(state_file) as f:
        return int(json.load(f).get("global_step", 0))
