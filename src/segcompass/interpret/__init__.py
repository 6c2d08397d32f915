"""Interpretability analyses (paper §4.3 and Appendix C.1): token-type activation patterns (Figure 4), instance
coverage of the most activated image tokens (Figure 5) and heatmap / mask agreement (Figure 8, right).

See :mod:`segcompass.interpret.analysis` for the token-type rules and the Qwen2.5-VL patch geometry.
"""

from .analysis import (
    TOKEN_TYPES,
    activation_patterns,
    heatmap_mask_agreement,
    image_token_grid,
    instance_coverage,
    patch_index_map,
    to_jsonable,
    token_mask_overlap,
    token_types,
)

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
