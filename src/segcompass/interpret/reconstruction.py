"""SAE reconstruction error vs mask loss (paper Appendix C.1, Figure 8 left): per sample, how well the frozen SAE
reconstructs the hook-layer states of the teacher-forced sequence, and how good the predicted masks are.

The paper plots one point per *training batch* (SAE reconstruction MSE against the training dice loss); here each
point is one *sample* of an evaluation split, scored with the same two quantities:

- **SAE reconstruction error**: ``model.sae(model.get_hook_states(...))``'s ``mse_loss``, i.e. the squared error
  ``||z - ẑ||²`` summed over the D hidden dimensions and averaged over the T tokens of the scored sequence (the
  SAE's own training loss term). Also reported: ``1 - FVE = Σ_t ||z_t - ẑ_t||² / Σ_t ||z_t - z̄||²`` over the
  sequence's tokens (scale free).
- **Mask loss**: the training dice loss of the decoder masks (:func:`segcompass.training.losses.segmentation_losses`
  ``.dice``: soft dice with smoothing 1 of ``σ(M̂_k)`` against the Hungarian-matched ground-truth instances on the
  m × m mask grid, restricted to the unpadded region, mean over matched pairs). A sample without a ground-truth
  instance has no matched pair, so its mask loss is ``None`` and it is left out of the fit.

Dimension glossary: ``B`` samples, ``T`` tokens of one scored sequence, ``D`` hidden size, ``K`` slots,
``(m, m)`` the mask grid.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from ..sam_frame import valid_region_mask
from ..training.losses import segmentation_losses
from ..training.targets import ground_truth_on_grid
from ..utils.logging import get_logger
from ._common import EvalMode, encode_sample, prepare
from .agreement import pearson_and_fit

logger = get_logger(__name__)

__all__ = ["matched_dice_loss", "reconstruction_mask_loss", "sae_reconstruction_error", "sample_reconstruction"]


def sae_reconstruction_error(model, hidden: torch.Tensor) -> tuple[float, float]:
    """``(mse, 1 - FVE)`` of the model's SAE on the ``(T, D)`` hook-layer states of one sequence (definitions in the
    module docstring; ``1 - FVE`` is 0.0 when the states do not vary)."""
    if hidden.ndim != 2:
        raise ValueError(f"hidden states must be (T, D) for one sequence, got shape {tuple(hidden.shape)}.")
    out = model.sae(hidden)
    z = hidden.to(out.reconstruction.dtype)  # (T, D)
    residual = float((out.reconstruction - z).pow(2).sum())
    spread = float((z - z.mean(0, keepdim=True)).pow(2).sum())
    return float(out.mse_loss), (residual / spread if spread > 0 else 0.0)


def matched_dice_loss(model, batch: Mapping[str, Any], out, sample: Mapping[str, Any], height: int, width: int
                      ) -> float | None:
    """The training dice loss of one forward ``out`` (batch of one) against ``sample["masks"]`` at ``(height,
    width)``; ``None`` without a ground-truth instance (no matched pair)."""
    grid = tuple(out.mask_logits.shape[-2:])  # (m, m)
    gt = ground_truth_on_grid(sample.get("masks") or [], (height, width), grid, "sample")  # (G, m, m)
    if gt.shape[0] == 0:
        return None
    valid = valid_region_mask(model.valid_mask_sizes(batch["reshaped_input_sizes"]).cpu(), grid)  # (1, m, m)
    losses = segmentation_losses(out.heatmap_logits.float().cpu(), out.mask_logits.float().cpu(),
                                 out.confidence_logits.float().cpu(), [gt], valid_mask=valid)
    return float(losses.dice) if losses.num_matched else None


def sample_reconstruction(model, sample: Mapping[str, Any], batch: Mapping[str, Any], inputs: Mapping[str, Any],
                          out, union) -> dict:
    """``{"sae_mse", "sae_fvu", "mask_dice_loss"}`` of one sample from its :func:`encode_sample` ``batch`` /
    ``inputs``, its forward ``out`` and its ``(H, W)`` ground-truth ``union`` (for the image size); one more
    backbone forward (``model.get_hook_states``)."""
    hidden = model.get_hook_states(**inputs)[0]  # (T, D)
    mse, fvu = sae_reconstruction_error(model, hidden)
    dice = matched_dice_loss(model, batch, out, sample, *union.shape)
    return {"sae_mse": mse, "sae_fvu": fvu, "mask_dice_loss": dice}


def summarize_reconstruction(rows: Sequence[Mapping[str, Any]], sample_ids: Sequence[str]) -> dict:
    """The result of :func:`reconstruction_mask_loss` from the B :func:`sample_reconstruction` dicts."""
    points = [(r["sae_mse"], r["mask_dice_loss"]) for r in rows if r["mask_dice_loss"] is not None]
    fit = pearson_and_fit([x for x, _ in points], [y for _, y in points])
    return {
        "sae_mse": [r["sae_mse"] for r in rows],
        "sae_fvu": [r["sae_fvu"] for r in rows],
        "mask_dice_loss": [r["mask_dice_loss"] for r in rows],
        **fit,
        "num_points": len(points),
        "sample_ids": list(sample_ids),
        "num_samples": len(rows),
    }


def reconstruction_mask_loss(
    model,
    processor,
    samples: Iterable[Mapping[str, Any]],
    *,
    completions: Sequence[str] | None = None,
) -> dict:
    """Figure 8 (left): per sample, the SAE reconstruction error and the mask dice loss, and their correlation.

    One teacher-forced ``model(...)`` forward and one ``model.get_hook_states`` per sample (definitions in the
    module docstring).

    Returns:
        ``{"sae_mse": [B], "sae_fvu": [B]`` (1 - FVE), ``"mask_dice_loss": [B]`` (``None`` for samples without a
        ground-truth instance), ``"pearson_r"``, ``"ols_slope"``, ``"ols_intercept"`` (dice loss regressed on
        ``sae_mse`` over the samples with a dice loss; ``None`` with fewer than two or zero variance),
        ``"num_points"`` (those samples), ``"sample_ids": [B]``, ``"num_samples"}``.
    """
    samples, completions = prepare(model, processor, samples, completions)
    rows = []
    with EvalMode(model):
        for index, (sample, completion) in enumerate(zip(samples, completions)):
            batch, inputs, _, union = encode_sample(model, processor, sample, completion, index)
            out = model(sam_pixel_values=batch["sam_pixel_values"],
                        reshaped_input_sizes=batch["reshaped_input_sizes"], **inputs)
            rows.append(sample_reconstruction(model, sample, batch, inputs, out, union))
    result = summarize_reconstruction(rows, [str(s.get("sample_id", i)) for i, s in enumerate(samples)])
    logger.info("reconstruction_mask_loss over %d samples (%d with a target): pearson_r=%s", len(samples),
                result["num_points"], result["pearson_r"])
    return result
