"""Interpretability analyses (paper §4.3 and Appendix C): token-type activation patterns (Figure 4), instance
coverage of the most activated image tokens (Figure 5), SAE reconstruction / heatmap vs mask quality (Figure 8),
per-sample panels (Figure 9) and their figures (:func:`explain`, ``segcompass explain``).

Modules, one job each:

- :mod:`~segcompass.interpret.tokens`: token types of a teacher-forced sequence and the Qwen2.5-VL image-token
  geometry (the token-type rules live in its docstring);
- :mod:`~segcompass.interpret.activations`: SAE activation patterns per token type (Figure 4);
- :mod:`~segcompass.interpret.coverage`: instance coverage of the top-activated image tokens (Figure 5);
- :mod:`~segcompass.interpret.agreement`: heatmap / mask agreement with the ground truth (Figure 8, right);
- :mod:`~segcompass.interpret.reconstruction`: SAE reconstruction error vs mask loss (Figure 8, left);
- :mod:`~segcompass.interpret.panels`: the data of one per-sample panel (Figure 9);
- :mod:`~segcompass.interpret.figures`: the matplotlib figures (optional dependency ``segcompass[interpret]``);
- :mod:`~segcompass.interpret.explain`: every analysis and figure in one call, ``explain.json`` + PNGs;
- :mod:`~segcompass.interpret.jsonable`: JSON-ready results;
- :mod:`~segcompass.interpret.ablations`: ablations of the interpretable path (used by the evaluation runner).

Results are plain dicts of Python scalars and lists (:func:`to_jsonable` turns anything else, e.g. numpy arrays,
into JSON-ready values).
"""

from .activations import activation_patterns
from .agreement import heatmap_mask_agreement
from .coverage import instance_coverage
from .explain import explain
from .jsonable import to_jsonable
from .reconstruction import reconstruction_mask_loss
from .tokens import TOKEN_TYPES, image_token_grid, patch_index_map, token_mask_overlap, token_types

__all__ = [
    "TOKEN_TYPES",
    "activation_patterns",
    "explain",
    "heatmap_mask_agreement",
    "image_token_grid",
    "instance_coverage",
    "patch_index_map",
    "reconstruction_mask_loss",
    "to_jsonable",
    "token_mask_overlap",
    "token_types",
]
