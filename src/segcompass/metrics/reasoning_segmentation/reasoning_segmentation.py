"""cIoU, gIoU, Pr@X, N-acc and T-acc in one pass, as an ``evaluate`` module.

Load it offline by path: ``evaluate.load(segcompass.metrics.REASONING_SEGMENTATION)``. The scoring itself lives
in ``segcompass.metrics.functional`` (imported by absolute name: evaluate runs this file from its cache).
"""

import evaluate

from segcompass.metrics import evaluate_support
from segcompass.metrics.functional import DEFAULT_PR_THRESHOLDS

_DESCRIPTION = """\
All reasoning / referring segmentation metrics of a split in one pass. Per sample i (one image + one
instruction), P_i is the union of the predicted instances and G_i the union of the ground-truth instances (empty
for a no-target sample), compared at the original image resolution with ignore pixels removed;
I_i = |P_i ∩ G_i|, U_i = |P_i ∪ G_i|, IoU_i = I_i / U_i.

    cIoU   = sum_i I_i / sum_i U_i
    gIoU   = mean_i IoU_i                     (both-empty sample = 1 by default)
    Pr@t   = share of target samples (G_i non-empty) with IoU_i >= t, t in 0.5 ... 0.9
    N-acc  = no-target samples predicted as no-target / no-target samples
    T-acc  = target samples predicted as having a target / target samples

A sample predicts "no target" when its predicted mask is empty, or as given by `no_target_predictions`.
Defaults follow LISA; `protocol="rela"` / `"gsva"` reproduce how ReLA/GRES and GSVA score explicit
no-target decisions on gRefCOCO. Values are fractions in [0, 1] (papers print x100); undefined ones are nan.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list`): one entry per sample: a mask (H, W) as a numpy array, torch tensor, single-channel PIL
        image or COCO RLE dict `{"size": [H, W], "counts": str}`, or a list of instance masks (union taken;
        `[]` = nothing predicted). Float masks are probabilities cut at `> 0.5`; integer masks use nonzero.
    references (`list`): the ground truth in the same forms; `[]` (or an all-zero mask) for a no-target sample.
    ignore_masks (`list`, *optional*): one mask or `None` per sample; those pixels are not scored.
    no_target_predictions (`list` of `bool`, *optional*): explicit "no target" decisions (a rejection head, a
        [REJ] token); by default a sample predicts "no target" when its predicted mask is empty.
    protocol (`str`, defaults to `"lisa"`): `"lisa"` (IoU from masks only; decisions feed N-acc/T-acc),
        `"rela"` (ReLA/GRES: rejected no-target sample -> IoU 1 with I = U = 0; accepted no-target sample -> IoU 0
        with U = |P|; rejected target sample -> I := 0) or `"gsva"` (as ReLA, but a rejected target sample keeps
        its mask IoU).
    empty_policy (`str`, defaults to `"one"`): IoU of a sample whose union is empty: `"one"` (LISA), `"zero"`
        (VisionReasoner) or `"skip"` (Seg-Zero: left out of gIoU and Pr@X).
    pr_thresholds (`list` of `float`, defaults to `(0.5, 0.6, 0.7, 0.8, 0.9)`): thresholds t of Pr@t.
    eval_size (`int` or `(H, W)`, *optional*): resize every mask to this size (nearest neighbour) before
        scoring (ReLA scores at 480 x 480); by default masks are compared at their original size and must match.
Returns:
    ciou (`float`), giou (`float`), pr@0.5 ... pr@0.9 (`float`), n_acc (`float`), t_acc (`float`),
    num_samples (`int`), num_no_target (`int`).
Examples:
    >>> import evaluate, numpy as np, segcompass.metrics
    >>> metric = evaluate.load(segcompass.metrics.REASONING_SEGMENTATION, keep_in_memory=True)
    >>> gt = np.zeros((4, 4), dtype=bool); gt[:2] = True          # 8 pixels
    >>> pred = np.zeros((4, 4), dtype=bool); pred[:1] = True      # 4 pixels inside gt
    >>> r = metric.compute(predictions=[pred, []], references=[gt, []])
    >>> r["ciou"], r["giou"], r["pr@0.5"], r["pr@0.6"], r["n_acc"], r["t_acc"]
    (0.5, 0.75, 1.0, 0.0, 1.0, 1.0)
"""

_CITATION = evaluate_support.CITATION_LISA + evaluate_support.CITATION_GRES


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ReasoningSegmentation(evaluate_support.MaskMetric):
    """cIoU, gIoU, Pr@X, N-acc and T-acc over per-sample masks stored as RLE."""

    DESCRIPTION = _DESCRIPTION
    KWARGS_DESCRIPTION = _KWARGS_DESCRIPTION
    CITATION = _CITATION
    PR_THRESHOLDS = tuple(DEFAULT_PR_THRESHOLDS)
