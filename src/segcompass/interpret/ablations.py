"""Ablations of the interpretable path, used to measure what it contributes (issue 6's model card numbers).

* ``"no_concepts"`` - the concept representations r_k (the concept interface's output, the slot mapper's only
  input from the SAE path) are replaced by zeros; the slot mapper still sees the K slot-token states e_k.
* ``"random_sae"`` - the trained SAE is swapped for a freshly initialised one with the same config, so the
  concepts fed to the codebook are meaningless but have the right shapes and sparsity machinery.

Both are context managers that restore the model on exit, also when the body raises.
"""

from __future__ import annotations

import contextlib
import copy

import torch

__all__ = ["ABLATIONS", "ablate", "check_ablation"]

ABLATIONS = ("none", "no_concepts", "random_sae")


@contextlib.contextmanager
def _zero_concepts(model):
    """r_k = 0 for every concept grouping: ``forward`` (one support set) is hooked, and ``forward_grouped`` (one per
    answer item, ``concept_grouping="answer_items"``, which does not pass through ``forward`` or its hooks) is
    shadowed by an instance attribute for the block."""
    interface = model.concept_interface

    def zeroed(output):
        slots, provenance = output  # (B, K, d_c), per-slot concept provenance
        return torch.zeros_like(slots), provenance

    grouped, shadowed = interface.forward_grouped, vars(interface).get("forward_grouped")
    handle = interface.register_forward_hook(lambda module, inputs, output: zeroed(output))
    interface.forward_grouped = lambda *args, **kwargs: zeroed(grouped(*args, **kwargs))
    try:
        yield
    finally:
        handle.remove()
        if shadowed is None:
            del interface.forward_grouped
        else:  # an enclosing block's
            interface.forward_grouped = shadowed


@contextlib.contextmanager
def _random_sae(model, seed: int):
    from ..sae import SparseAutoencoder

    saved = {k: v.detach().clone() for k, v in model.sae.state_dict().items()}
    interface = model.concept_interface
    saved_batches = interface.baseline_batches.clone()
    fork = torch.random.fork_rng(devices=[])
    with fork:
        torch.manual_seed(seed)
        fresh = SparseAutoencoder(copy.deepcopy(model.sae.config))
    model.sae.load_state_dict(fresh.state_dict())
    interface.baseline_batches.zero_()  # the trained SAE's feature baseline means nothing for random features
    dictionary, model.sae.feature_dictionary = model.sae.feature_dictionary, None  # nor do its feature labels
    try:
        yield
    finally:
        model.sae.load_state_dict(saved)
        interface.baseline_batches.copy_(saved_batches)
        model.sae.feature_dictionary = dictionary


def check_ablation(ablation: str | None) -> str | None:
    """``ablation`` normalised (``"none"`` -> ``None``); a ``ValueError`` naming the choices when it is unknown."""
    if ablation not in (None, *ABLATIONS):
        raise ValueError(f"ablation={ablation!r} is not one of {ABLATIONS}.")
    return None if ablation == "none" else ablation


def ablate(model, ablation: str | None, seed: int = 12345):
    """Context manager applying ``ablation`` (one of :data:`ABLATIONS`; ``None`` / ``"none"`` = no change) to a
    :class:`~segcompass.SegCompassForReasoningSegmentation` for the duration of the ``with`` block."""
    ablation = check_ablation(ablation)
    if ablation == "no_concepts":
        return _zero_concepts(model)
    if ablation == "random_sae":
        return _random_sae(model, seed)
    return contextlib.nullcontext()
