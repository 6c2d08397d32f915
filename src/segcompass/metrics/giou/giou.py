"""gIoU (mean per-sample IoU) for referring / reasoning segmentation, as an ``evaluate`` module.

Load it offline by path: ``evaluate.load(segcompass.metrics.GIOU)``. The scoring itself lives in
``segcompass.metrics.functional`` (imported by absolute name: evaluate runs this file from its cache).
"""

import evaluate

from segcompass.metrics import evaluate_support

_DESCRIPTION = """\
gIoU is the mean of the per-sample IoU over a split:

    gIoU = (1 / N) * sum_i |P_i ∩ G_i| / |P_i ∪ G_i|

where P_i is the union of the predicted instances of sample i (one image + one instruction), G_i the union of
its ground-truth instances (empty for a no-target sample), both at the original image resolution, with ignore
pixels removed. A sample whose prediction and ground truth are both empty scores 1 (LISA and the gRefCOCO
no-target rule); `empty_policy` switches to 0 (VisionReasoner) or leaves such samples out (Seg-Zero).
`protocol="rela"` reproduces ReLA/GRES's scoring of explicit no-target decisions. The value is a fraction in
[0, 1] (papers print x100).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list`): one entry per sample: a mask (H, W) as a numpy array, torch tensor, single-channel PIL
        image or COCO RLE dict `{"size": [H, W], "counts": str}`, or a list of instance masks (union taken;
        `[]` = nothing predicted). Float masks are probabilities cut at `> 0.5`; integer masks use nonzero.
    references (`list`): the ground truth in the same forms; `[]` (or an all-zero mask) for a no-target sample.
    ignore_masks (`list`, *optional*): one mask or `None` per sample; those pixels are not scored.
    no_target_predictions (`list` of `bool`, *optional*): explicit "no target" decisions; by default a sample
        predicts "no target" when its predicted mask is empty.
    protocol (`str`, defaults to `"lisa"`): `"lisa"`, `"rela"` (ReLA/GRES: rejected no-target sample -> 1,
        accepted no-target sample -> 0, rejected target sample -> 0) or `"gsva"` (as ReLA, but a rejected
        target sample keeps its mask IoU).
    empty_policy (`str`, defaults to `"one"`): IoU of a sample whose union is empty: `"one"`, `"zero"` or
        `"skip"` (left out of the mean).
    eval_size (`int` or `(H, W)`, *optional*): resize every mask to this size (nearest neighbour) before
        scoring; by default masks are compared at their original size and must match.
Returns:
    giou (`float`): mean per-sample IoU in [0, 1] (nan if every sample was skipped).
Examples:
    >>> import evaluate, numpy as np, segcompass.metrics
    >>> giou = evaluate.load(segcompass.metrics.GIOU, keep_in_memory=True)
    >>> gt = np.zeros((4, 4), dtype=bool); gt[:2] = True          # 8 pixels
    >>> pred = np.zeros((4, 4), dtype=bool); pred[:1] = True      # 4 pixels inside gt
    >>> giou.compute(predictions=[pred, []], references=[gt, []])  # (4/8 + 1) / 2: both-empty scores 1
    {'giou': 0.75}
"""

_CITATION = evaluate_support.CITATION_LISA + evaluate_support.CITATION_GRES


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GIoU(evaluate_support.MaskMetric):
    """Mean per-sample IoU over per-sample masks stored as RLE."""

    DESCRIPTION = _DESCRIPTION
    KWARGS_DESCRIPTION = _KWARGS_DESCRIPTION
    CITATION = _CITATION
    RESULT_KEYS = ("giou",)
