"""Interpretability analyses (paper §4.3 and Appendix C.1): token-type activation patterns (Figure 4), instance
coverage of the most activated image tokens (Figure 5) and heatmap / mask agreement (Figure 8, right).

Modules, one job each:

- :mod:`~segcompass.interpret.tokens`: token types of a teacher-forced sequence and the Qwen2.5-VL image-token
  geometry (the token-type rules live in its docstring);
- :mod:`~segcompass.interpret.activations`: SAE activation patterns per token type (Figure 4);
- :mod:`~segcompass.interpret.coverage`: instance coverage of the top-activated image tokens (Figure 5);
- :mod:`~segcompass.interpret.agreement`: heatmap / mask agreement with the ground truth (Figure 8, right);
- :mod:`~segcompass.interpret.jsonable`: JSON-ready results;
- :mod:`~segcompass.interpret.ablations`: ablations of the interpretable path (used by the evaluation runner).

Results are plain dicts of Python scalars and lists (:func:`to_jsonable` turns anything else, e.g. numpy arrays,
into JSON-ready values).
"""

from .activations import activation_patterns
from .agreement import heatmap_mask_agreement
from .coverage import instance_coverage
from .jsonable import to_jsonable
from .tokens import TOKEN_TYPES, image_token_grid, patch_index_map, token_mask_overlap, token_types

__all__ = [
    "TOKEN_TYPES",
    "activation_patterns",
    "heatmap_mask_agreement",
    "image_token_grid",
    "instance_coverage",
    "patch_index_map",
    "to_jsonable",
    "token_mask_overlap",
    "token_types",
]
