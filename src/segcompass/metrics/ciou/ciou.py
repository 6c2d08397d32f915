"""cIoU (cumulative IoU, a.k.a. overall IoU) for referring / reasoning segmentation, as an ``evaluate`` module.

Load it offline by path: ``evaluate.load(segcompass.metrics.CIOU)``. The scoring itself lives in
``segcompass.metrics.functional`` (imported by absolute name: evaluate runs this file from its cache).
"""

import evaluate

from segcompass.metrics import evaluate_support

_DESCRIPTION = """\
cIoU is the cumulative intersection over the cumulative union of a split:

    cIoU = sum_i |P_i ∩ G_i| / sum_i |P_i ∪ G_i|

where P_i is the union of the predicted instances of sample i (one image + one instruction), G_i the union of
its ground-truth instances (empty for a no-target sample), both at the original image resolution, with ignore
pixels removed from intersection and union. Large objects weigh more than small ones; see the `giou` module for
the per-sample mean. Defaults follow LISA (reasoning segmentation); `protocol="rela"` reproduces ReLA/GRES on
gRefCOCO. The value is a fraction in [0, 1] (papers print x100).
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
    protocol (`str`, defaults to `"lisa"`): `"lisa"`, `"rela"` (ReLA/GRES: a target sample the model rejects
        counts intersection 0; a no-target sample it rejects adds nothing to the sums) or `"gsva"`.
    empty_policy (`str`, defaults to `"one"`): value when every sample has an empty union
        (`"one"` -> 1.0, `"zero"` -> 0.0, `"skip"` -> nan).
    eval_size (`int` or `(H, W)`, *optional*): resize every mask to this size (nearest neighbour) before
        scoring, as ReLA does at 480; by default masks are compared at their original size and must match.
Returns:
    ciou (`float`): cumulative IoU in [0, 1].
Examples:
    >>> import evaluate, numpy as np, segcompass.metrics
    >>> ciou = evaluate.load(segcompass.metrics.CIOU, keep_in_memory=True)
    >>> gt = np.zeros((4, 4), dtype=bool); gt[:2] = True          # 8 pixels
    >>> pred = np.zeros((4, 4), dtype=bool); pred[:1] = True      # 4 pixels inside gt
    >>> ciou.compute(predictions=[pred, pred], references=[gt, []])  # (4 + 0) / (8 + 4)
    {'ciou': 0.3333333333333333}
"""

_CITATION = evaluate_support.CITATION_RES + evaluate_support.CITATION_LISA + evaluate_support.CITATION_GRES


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CIoU(evaluate_support.MaskMetric):
    """Cumulative IoU over per-sample masks stored as RLE."""

    DESCRIPTION = _DESCRIPTION
    KWARGS_DESCRIPTION = _KWARGS_DESCRIPTION
    CITATION = _CITATION
    RESULT_KEYS = ("ciou",)
