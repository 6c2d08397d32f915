"""Shared base of the SegCompass ``evaluate`` modules (``ciou/``, ``giou/``, ``reasoning_segmentation/``).

``evaluate`` copies each module script into its cache and imports it from there, so the scripts import this
file by its absolute name (``from segcompass.metrics import evaluate_support``).

Storage format: masks have a different size in every image, so each sample is stored as COCO RLE, the same
encoding as the dataset schema (:mod:`segcompass.data.schema`):

| input column              | feature                                   | meaning                                    |
|---------------------------|-------------------------------------------|--------------------------------------------|
| ``predictions``           | ``List({"size": [H, W], "counts": str})`` | predicted instances (union taken)          |
| ``references``            | ``List({"size": [H, W], "counts": str})`` | ground-truth instances; ``[]`` = no target |
| ``ignore_masks``          | ``List({"size": [H, W], "counts": str})`` | ignored regions (union); ``[]`` = none     |
| ``no_target_predictions`` | ``bool`` or ``None``                      | explicit "no target" decision              |

``add``, ``add_batch`` and ``compute`` accept any per-sample form that
:func:`~segcompass.utils.masks.to_binary_mask` reads (numpy, torch, PIL, RLE, float probabilities cut at 0.5),
or a list of instance masks, and encode it to RLE before ``evaluate`` writes it, so a dense mask never travels
through Arrow as a nested list. ``ignore_masks`` and ``no_target_predictions`` are optional.
"""

from __future__ import annotations

from typing import Any

import datasets
import evaluate

from ..utils.masks import encode_rle, is_rle, normalize_rle
from .functional import reasoning_segmentation_metrics
from .inputs import check_rle_fields, split_batch

RLE_FEATURE = {"size": datasets.List(datasets.Value("int32")), "counts": datasets.Value("string")}

MASK_FEATURES = datasets.Features(
    {
        "predictions": datasets.List(RLE_FEATURE),
        "references": datasets.List(RLE_FEATURE),
        "ignore_masks": datasets.List(RLE_FEATURE),
        "no_target_predictions": datasets.Value("bool"),
    }
)

CITATION_LISA = """\
@inproceedings{lai2024lisa,
  title     = {{LISA}: Reasoning Segmentation via Large Language Model},
  author    = {Lai, Xin and Tian, Zhuotao and Chen, Yukang and Li, Yanwei and Yuan, Yuhui and Liu, Shu and Jia, Jiaya},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2024}
}
"""

CITATION_GRES = """\
@inproceedings{liu2023gres,
  title     = {{GRES}: Generalized Referring Expression Segmentation},
  author    = {Liu, Chang and Ding, Henghui and Jiang, Xudong},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2023}
}
"""

CITATION_RES = """\
@inproceedings{hu2016segmentation,
  title     = {Segmentation from Natural Language Expressions},
  author    = {Hu, Ronghang and Rohrbach, Marcus and Darrell, Trevor},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2016}
}
"""

COMPUTE_OPTIONS = ("protocol", "empty_policy", "pr_thresholds", "eval_size")
"""Keyword options of ``compute`` besides the input columns."""

REFERENCE_URLS = [
    "https://github.com/dvlab-research/LISA",
    "https://github.com/henghuiding/ReLA",
]


def sample_to_rle_instances(sample: Any, role: str) -> list[dict]:
    """One sample's prediction/reference as a list of RLE dicts (one dense mask becomes a one-item list)."""
    if sample is None:
        raise ValueError(f"The {role} of a sample is None; pass [] for a sample with no instances.")
    try:
        if is_rle(sample):
            check_rle_fields(sample, f"The {role} of a sample")
            return [normalize_rle(sample)]
        if isinstance(sample, (list, tuple)):
            for item in sample:
                if is_rle(item):
                    check_rle_fields(item, f"An instance of the {role} of a sample")
            return [normalize_rle(item) if is_rle(item) else encode_rle(item) for item in sample]
        return [encode_rle(sample)]
    except TypeError as err:  # a value of an unexpected type deep inside the conversion
        raise ValueError(
            f"Cannot read the {role} of a sample as a mask ({err}); pass a 2-D bool / 0-1 array or tensor, a COCO RLE "
            "dict or a list of them."
        ) from None


class MaskMetric(evaluate.Metric):
    """``evaluate.Metric`` over per-sample masks stored as RLE (see the module docstring).

    Subclasses set ``DESCRIPTION``, ``KWARGS_DESCRIPTION``, ``CITATION``, ``RESULT_KEYS`` (``None``: every value of
    :func:`reasoning_segmentation_metrics`) and ``PR_THRESHOLDS``; ``_info`` and ``_compute`` are shared, and
    :meth:`_statistics_kwargs` turns the stored columns back into the arguments of
    :mod:`segcompass.metrics.functional`.
    """

    DESCRIPTION: str = ""
    KWARGS_DESCRIPTION: str = ""
    CITATION: str = ""
    RESULT_KEYS: tuple[str, ...] | None = None
    PR_THRESHOLDS: tuple[float, ...] = ()

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=self.DESCRIPTION,
            citation=self.CITATION,
            inputs_description=self.KWARGS_DESCRIPTION,
            features=MASK_FEATURES,
            reference_urls=REFERENCE_URLS,
        )

    def _compute(
        self,
        predictions,
        references,
        ignore_masks,
        no_target_predictions,
        protocol: str = "lisa",
        empty_policy: str = "one",
        pr_thresholds=None,
        eval_size=None,
    ) -> dict:
        result = reasoning_segmentation_metrics(
            predictions,
            references,
            **self._statistics_kwargs(ignore_masks, no_target_predictions),
            protocol=protocol,
            empty_policy=empty_policy,
            pr_thresholds=self.PR_THRESHOLDS if pr_thresholds is None else pr_thresholds,
            eval_size=eval_size,
        )
        return result if self.RESULT_KEYS is None else {key: result[key] for key in self.RESULT_KEYS}

    def _encode_batch(
        self, predictions: Any, references: Any, ignore_masks: Any, no_target_predictions: Any
    ) -> dict[str, list]:
        preds, refs, ignores, decisions = split_batch(predictions, references, ignore_masks, no_target_predictions)
        return {
            "predictions": [sample_to_rle_instances(p, "prediction") for p in preds],
            "references": [sample_to_rle_instances(r, "reference") for r in refs],
            "ignore_masks": [[] if i is None else sample_to_rle_instances(i, "ignore mask") for i in ignores],
            "no_target_predictions": decisions,
        }

    def add_batch(
        self,
        *,
        predictions: Any = None,
        references: Any = None,
        ignore_masks: Any = None,
        no_target_predictions: Any = None,
        **kwargs: Any,
    ) -> None:
        """Add a batch: one entry per sample in each argument (``ignore_masks``/``no_target_predictions`` optional)."""
        batch = self._encode_batch(predictions, references, ignore_masks, no_target_predictions)
        super().add_batch(**batch, **kwargs)

    def add(
        self,
        *,
        prediction: Any = None,
        reference: Any = None,
        ignore_masks: Any = None,
        no_target_predictions: Any = None,
        **kwargs: Any,
    ) -> None:
        """Add one sample (``ignore_masks``: that sample's ignore mask; ``no_target_predictions``: its decision)."""
        batch = self._encode_batch([prediction], [reference], [ignore_masks], [no_target_predictions])
        super().add(
            prediction=batch["predictions"][0],
            reference=batch["references"][0],
            ignore_masks=batch["ignore_masks"][0],
            no_target_predictions=batch["no_target_predictions"][0],
            **kwargs,
        )

    def compute(
        self,
        *,
        predictions: Any = None,
        references: Any = None,
        ignore_masks: Any = None,
        no_target_predictions: Any = None,
        **kwargs: Any,
    ) -> dict | None:
        """Score everything added so far plus the given samples; ``kwargs`` are the metric's options.

        Raises ``ValueError`` for an unknown option, for ``predictions`` without ``references`` (or the reverse), and
        when there is nothing to score (no samples given or added since the last ``compute``).
        """
        unknown = sorted(set(kwargs) - set(COMPUTE_OPTIONS))
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for {type(self).__name__}.compute; the options are "
                f"{list(COMPUTE_OPTIONS)} (and the inputs predictions=, references=, ignore_masks=, "
                "no_target_predictions=)."
            )
        if predictions is not None or references is not None:
            self.add_batch(
                predictions=predictions,
                references=references,
                ignore_masks=ignore_masks,
                no_target_predictions=no_target_predictions,
            )
        elif ignore_masks is not None or no_target_predictions is not None:
            raise ValueError(
                "`ignore_masks` / `no_target_predictions` were given without predictions and references; pass "
                "them together (or with add_batch)."
            )
        elif self.num_process == 1 and self.writer is None:
            raise ValueError(
                f"No samples to score; pass predictions= and references= to {type(self).__name__}.compute, or add "
                "them first with add_batch / add."
            )
        return super().compute(**kwargs)

    @staticmethod
    def _statistics_kwargs(ignore_masks: list, no_target_predictions: list) -> dict[str, Any]:
        """Stored optional columns → functional-API arguments (``None`` when a column was never filled)."""
        return {
            "ignore_masks": ignore_masks if any(len(i) > 0 for i in ignore_masks) else None,
            "no_target_predictions": (
                no_target_predictions if any(d is not None for d in no_target_predictions) else None
            ),
        }

