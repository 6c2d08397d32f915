"""Configuration of the Sparse Autoencoder (paper §3.2, eq. 7; appendix A.1)."""

from __future__ import annotations

from transformers import PreTrainedConfig

ACTIVATIONS = ("relu", "topk", "jumprelu")


class SparseAutoencoderConfig(PreTrainedConfig):
    r"""Configuration of a [`SparseAutoencoder`].

    The SAE reads the residual stream of a (multimodal) LLM at ``hidden_states[hook_layer]`` and maps each
    token's ``d_in``-dimensional state to ``d_sae`` sparse, non-negative features.

    Args:
        d_in (`int`): width of the hooked hidden states (3584 for Qwen2.5-VL-7B, 4096 for LLaVA-1.5-7B).
        d_sae (`int`): number of dictionary features (65 536 in the paper).
        activation (`str`): ``"relu"`` (ReLU + L1, as in the paper and SAE-V; default), ``"topk"`` (keep the
            ``k`` largest pre-activations per token) or ``"jumprelu"`` (pass pre-activations above a learned
            per-feature ``threshold``).
        k (`int`, *optional*): number of active features per token, required for ``"topk"``.
        hook_layer (`int`): index into the backbone's ``hidden_states`` tuple; 0 is the embedding output, so
            ``hook_layer=13`` is the output of decoder layer 13 (Qwen2.5-VL-7B; LLaVA-1.5 uses 16).
        apply_b_dec_to_input (`bool`): subtract ``b_dec`` from the input before encoding (SAELens option;
            the paper's SAE does not).
        l1_coefficient (`float`): α in ‖z − ẑ‖² + α‖h‖₁.
        jumprelu_init_threshold (`float`): initial per-feature threshold for ``"jumprelu"``.
        backbone_name_or_path (`str`, *optional*): which model the SAE was trained on (informational).
    """

    model_type = "segcompass_sae"

    d_in: int = 64
    d_sae: int = 512
    activation: str = "relu"
    k: int | None = None
    hook_layer: int = 0
    apply_b_dec_to_input: bool = False
    l1_coefficient: float = 5.0
    jumprelu_init_threshold: float = 0.001
    backbone_name_or_path: str | None = None

    def __post_init__(self, **kwargs):
        if not isinstance(self.d_in, int) or self.d_in < 1:
            raise ValueError(f"`d_in` must be a positive int (the hooked hidden size), got {self.d_in!r}.")
        if not isinstance(self.d_sae, int) or self.d_sae < 1:
            raise ValueError(f"`d_sae` must be a positive int (the dictionary size), got {self.d_sae!r}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"Unknown SAE `activation` {self.activation!r}; choose one of {list(ACTIVATIONS)}."
            )
        if self.activation == "topk":
            if self.k is None:
                raise ValueError("`activation='topk'` needs `k` (active features per token), e.g. k=32.")
            if not isinstance(self.k, int) or not 1 <= self.k <= self.d_sae:
                raise ValueError(
                    f"`k` must be an int in [1, d_sae={self.d_sae}] for top-k, got k={self.k!r}. "
                    "Lower k or raise d_sae."
                )
        if not isinstance(self.hook_layer, int) or self.hook_layer < 0:
            raise ValueError(
                f"`hook_layer` indexes `hidden_states` (0 = embedding output) and must be >= 0, got {self.hook_layer!r}."
            )
        if self.l1_coefficient < 0:
            raise ValueError(f"`l1_coefficient` must be >= 0, got {self.l1_coefficient}.")
        super().__post_init__(**kwargs)
