"""The Sparse Autoencoder as its own pretrained model (paper §3.2, eq. 7; DESIGN decision 4).

Dimension glossary: ``T`` tokens, ``B`` batch, ``d_in`` hooked hidden size, ``d_sae`` dictionary size,
``N`` concepts kept per sample, ``nnz`` number of active (token, feature) pairs.

Weights use the SAELens orientation (``W_enc`` (d_in, d_sae), ``W_dec`` (d_sae, d_in)) so checkpoints move
between the two formats without transposes (:mod:`segcompass.sae.saelens`).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from .configuration_sae import SparseAutoencoderConfig
from .feature_dictionary import FeatureDictionary, FeatureDictionaryMixin
from .gate_bits import _pack_bits, _unpack_columns
from .outputs import (  # re-exported: the outputs' home is sae/outputs.py
    PooledConcepts,
    SparseAutoencoderOutput,
    SparseFeatures,
)

# Dense (tokens × d_sae) fp32 elements materialised at once by the chunked paths: 2**24 elements = 64 MiB.
_CHUNK_ELEMENTS = 2**24
# Most tokens of one tile in `pooled_concepts` under a per-feature gate (its tiles then span 2**24 / 4096 features).
_MAX_TOKEN_TILE = 4096
_POOLINGS = ("max", "mean", "sum")


class SparseAutoencoder(FeatureDictionaryMixin, PreTrainedModel):
    r"""Sparse Autoencoder over the hidden states of a (multimodal) LLM.

    ``h(z) = σ(z W_enc + b_enc)`` with σ = ReLU, top-k or JumpReLU; ``ẑ = h W_dec + b_dec``; trained with
    ‖z − ẑ‖² + α‖h‖₁ (paper eq. 7). Load it alone with ``SparseAutoencoder.from_pretrained(path)`` or
    ``AutoModel.from_pretrained(path)`` after ``import segcompass``; read or write the SAELens layout with
    [`from_saelens`] / [`save_saelens`]. ``feature_dictionary`` (a
    [`~segcompass.sae.feature_dictionary.FeatureDictionary`] or None) labels the features: ``save_pretrained`` writes
    it beside the weights and ``from_pretrained`` reads it back; [`feature_label`] reads one label.
    """

    config_class = SparseAutoencoderConfig
    base_model_prefix = "sae"
    main_input_name = "hidden_states"
    _no_split_modules = []

    def __init__(self, config: SparseAutoencoderConfig):
        super().__init__(config)
        d_in, d_sae = config.d_in, config.d_sae
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        if config.activation == "jumprelu":
            self.threshold = nn.Parameter(torch.full((d_sae,), float(config.jumprelu_init_threshold)))
        self.feature_dictionary: FeatureDictionary | None = None
        self.post_init()

    def feature_label(self, index: int) -> str | None:
        """Feature ``index``'s readable label from ``feature_dictionary`` (None without one, or if it never fired)."""
        return None if self.feature_dictionary is None else self.feature_dictionary.label(index)

    def _init_weights(self, module):
        """Unit-norm random decoder rows and a tied encoder (``W_enc = W_decᵀ``), zero biases."""
        if not isinstance(module, SparseAutoencoder) or module.W_dec.is_meta:
            return
        if not getattr(module.W_dec, "_is_hf_initialized", False):
            directions = torch.randn(module.config.d_sae, module.config.d_in, dtype=torch.float32)
            directions = directions / directions.norm(dim=-1, keepdim=True)  # (d_sae, d_in)
            init.copy_(module.W_dec, directions)
            init.copy_(module.W_enc, directions.T)
        init.zeros_(module.b_enc)
        init.zeros_(module.b_dec)
        if module.config.activation == "jumprelu":
            init.constant_(module.threshold, float(module.config.jumprelu_init_threshold))

    # ------------------------------------------------------------------ checks
    def _check_input(self, hidden_states: torch.Tensor) -> None:
        if not isinstance(hidden_states, torch.Tensor):
            raise ValueError(f"SAE input must be a torch.Tensor of shape (..., {self.config.d_in}), got {type(hidden_states)}.")
        if hidden_states.shape[-1] != self.config.d_in:
            raise ValueError(
                f"SAE expects hidden states with last dimension d_in={self.config.d_in}, got shape "
                f"{tuple(hidden_states.shape)}. Pass `hidden_states[{self.config.hook_layer}]` of the backbone this "
                "SAE was trained on, or load the SAE that matches your backbone's hidden size."
            )
        if not torch.isfinite(hidden_states).all():
            bad = int((~torch.isfinite(hidden_states)).sum())
            raise ValueError(
                f"SAE input contains {bad} NaN/inf values (shape {tuple(hidden_states.shape)}). Check the backbone "
                "for fp16 overflow (run it in bf16/fp32) and the inputs that produced these hidden states."
            )

    @staticmethod
    def _check_threshold(threshold: float) -> float:
        if threshold < 0:
            raise ValueError(f"`threshold` is compared with |h| and must be >= 0, got {threshold}.")
        return float(threshold)

    # ------------------------------------------------------------------ core maps
    def _pre_activation(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(..., d_in) -> (..., d_sae) encoder pre-activations (one ``addmm``: the bias is added in the matmul's
        output pass, no second (..., d_sae) tensor)."""
        x = hidden_states.to(self.W_enc.dtype)
        if self.config.apply_b_dec_to_input:
            x = x - self.b_dec
        flat = x.reshape(-1, x.shape[-1])  # (n, d_in)
        return torch.addmm(self.b_enc, flat, self.W_enc).view(*x.shape[:-1], self.W_enc.shape[1])  # (..., d_sae)

    def _membership(self, pre: torch.Tensor, threshold: float = 0.0, features: slice | None = None) -> torch.Tensor:
        """Which features are active: (..., d_sae) pre-activations -> (..., d_sae) bool.

        The one place the activation's gate is decided; every path (``encode``, ``encode_sparse``,
        ``pooled_concepts``) reads its decisions from here, so they agree whatever the matmul kernel rounded.
        ReLU: ``pre > 0``; JumpReLU: ``pre > threshold_j``; TopK: the k largest pre-activations that are > 0, ties
        at the k-th value broken towards the lower feature index (deterministic, unlike ``torch.topk``).
        ``threshold`` (τ) additionally requires ``h >= τ``. ``features``: ``pre`` holds only these features' columns
        (ReLU and JumpReLU only, whose gate reads a feature's own pre-activation).
        """
        activation = self.config.activation
        if activation == "relu":
            return pre >= threshold if threshold > 0 else pre > 0  # one pass: h >= τ > 0 implies pre > 0
        if activation == "jumprelu":
            member = pre > (self.threshold if features is None else self.threshold[features])
        else:  # topk
            if features is not None and pre.shape[-1] != self.config.d_sae:
                raise ValueError("TopK's gate reads every feature of a token; pass whole rows of pre-activations.")
            kth = pre.topk(self.config.k, dim=-1).values[..., -1:]  # (..., 1)
            at_least = pre >= kth
            if bool((at_least.sum(-1) <= self.config.k).all()):  # no tie is cut at the k-th value (the usual case)
                member = at_least & (pre > 0)
            else:
                above = pre > kth
                ties = pre == kth
                room = self.config.k - above.sum(-1, keepdim=True)  # tied entries still admitted, >= 1
                member = (above | (ties & (ties.cumsum(-1, dtype=torch.int32) <= room))) & (pre > 0)
        if threshold > 0:
            member = member & (pre >= threshold)
        return member

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        """(..., d_sae) pre-activations -> (..., d_sae) sparse non-negative codes. ReLU is applied in place (its
        gate ``pre > 0`` is :meth:`_membership`'s, decided on the same numbers); the other activations mask with
        :meth:`_membership`."""
        if self.config.activation == "relu":
            return pre.relu_() if not (pre.requires_grad and pre.is_leaf) else pre.relu()
        return torch.where(self._membership(pre), pre, torch.zeros((), dtype=pre.dtype, device=pre.device))

    def encode(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Sparse codes h(z): (..., d_in) -> (..., d_sae)."""
        self._check_input(hidden_states)
        return self._activate(self._pre_activation(hidden_states))

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """Reconstruction ẑ: (..., d_sae) -> (..., d_in)."""
        if feature_acts.shape[-1] != self.config.d_sae:
            raise ValueError(
                f"`decode` expects features with last dimension d_sae={self.config.d_sae}, got shape "
                f"{tuple(feature_acts.shape)}."
            )
        return feature_acts.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> SparseAutoencoderOutput:
        """Encode, decode and score.

        Args:
            hidden_states (`torch.FloatTensor` of shape `(..., d_in)`): hooked hidden states z.
            attention_mask (`torch.Tensor` of shape `(...)`, *optional*): 1 for tokens that count in the losses.
        """
        feature_acts = self.encode(hidden_states)  # (..., d_sae)
        reconstruction = self.decode(feature_acts)  # (..., d_in)
        x = hidden_states.to(reconstruction.dtype)
        per_token_mse = (reconstruction - x).pow(2).sum(-1)  # (...)
        per_token_l1 = feature_acts.abs().sum(-1)  # (...)
        per_token_l0 = (feature_acts != 0).sum(-1).to(per_token_mse.dtype)  # (...)
        if attention_mask is None:
            weights = torch.ones_like(per_token_mse)
        else:
            if attention_mask.shape != per_token_mse.shape:
                raise ValueError(
                    f"`attention_mask` must have shape {tuple(per_token_mse.shape)} (the hidden states without "
                    f"d_in), got {tuple(attention_mask.shape)}."
                )
            weights = attention_mask.to(per_token_mse.dtype)
        count = weights.sum().clamp_min(1.0)
        mse = (per_token_mse * weights).sum() / count
        l1 = (per_token_l1 * weights).sum() / count
        l0 = (per_token_l0 * weights).sum() / count
        return SparseAutoencoderOutput(
            loss=mse + self.config.l1_coefficient * l1,
            feature_acts=feature_acts,
            reconstruction=reconstruction,
            mse_loss=mse,
            l1_loss=l1,
            l0=l0,
        )

    # ------------------------------------------------------------------ sparse paths
    def _token_chunk(self, rows_per_token: int = 1) -> int:
        return max(1, _CHUNK_ELEMENTS // (self.config.d_sae * rows_per_token))

    @torch.no_grad()
    def encode_sparse(
        self, hidden_states: torch.Tensor, threshold: float = 0.0, chunk_size: int | None = None
    ) -> SparseFeatures:
        """Active features of every token as (indices, values), computed in token chunks.

        A feature is active at a token when its gate is open and ``h >= threshold``. Only one chunk of
        (chunk_size, d_sae) is ever dense; the result holds ``nnz`` entries. Not differentiable (inspection
        API); use [`pooled_concepts`] inside models.

        Args:
            hidden_states (`torch.FloatTensor` of shape `(..., d_in)`).
            threshold (`float`): minimum |activation|.
            chunk_size (`int`, *optional*): tokens per chunk (default: 64 MiB of fp32 codes).
        """
        threshold = self._check_threshold(threshold)
        self._check_input(hidden_states)
        leading = tuple(hidden_states.shape[:-1])
        flat = hidden_states.reshape(-1, self.config.d_in)  # (T, d_in)
        chunk = chunk_size or self._token_chunk()
        indices, values, counts = [], [], []
        for start in range(0, flat.shape[0], chunk):
            pre = self._pre_activation(flat[start : start + chunk])  # (c, d_sae)
            active = self._membership(pre, threshold)  # (c, d_sae)
            rows, cols = active.nonzero(as_tuple=True)  # row-major: ascending feature index per token
            indices.append(cols)
            values.append(pre[rows, cols])
            counts.append(active.sum(-1))
        offsets = torch.zeros(flat.shape[0] + 1, dtype=torch.long, device=flat.device)
        if counts:
            offsets[1:] = torch.cat(counts).cumsum(0)
        empty_idx = torch.zeros(0, dtype=torch.long, device=flat.device)
        return SparseFeatures(
            indices=torch.cat(indices) if indices else empty_idx,
            values=torch.cat(values) if values else flat.new_zeros(0),
            offsets=offsets,
            shape=leading + (self.config.d_sae,),
        )

    def pooled_concepts(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        threshold: float = 0.0,
        top_n: int = 256,
        pooling: str = "max",
        chunk_size: int | None = None,
        baseline: torch.Tensor | None = None,
    ) -> PooledConcepts:
        """The support set S(z) of each sample, pooled over tokens, top-N kept (paper eq. 4; DESIGN decision 3).

        A feature belongs to S(z) when it is active (its gate is open and ``h >= threshold``) at any valid token.
        Its activation is pooled over valid tokens (``"max"`` default, ``"mean"`` or ``"sum"`` of the thresholded
        codes) and the ``top_n`` largest are kept. Selection runs without gradients, per sample, in tiles of
        token positions x features (only valid tokens are encoded), so a dense (T, d_sae) tensor is never held
        whole; the kept features are then recomputed on a (B, T, N) slice with gradients, so the values are
        differentiable w.r.t. the hidden states (and encoder weights). Its cost is the encoder matmul plus a few
        passes over each chunk (``benchmarks/bench_concept_floor.py``).

        Which (token, feature) pairs are active is decided once, in the selection pass, and reused by the
        recomputation: the two matmuls round differently, and a gate decided twice (TopK's k-th value, τ) could
        drop an activation the selection counted. The decisions are kept as one bit per (token, feature) of a sample
        (T × d_sae / 8 bytes), and read back at the N kept features.

        Args:
            hidden_states (`torch.FloatTensor` of shape `(B, T, d_in)`).
            attention_mask (`torch.Tensor` of shape `(B, T)`, *optional*): 1 for tokens to pool over.
            threshold (`float`): τ, minimum |activation| for a feature to count.
            top_n (`int`): N, concepts kept per sample (fewer are marked by ``mask``).
            pooling (`str`): ``"max"``, ``"mean"`` or ``"sum"``.
            chunk_size (`int`, *optional*): token positions per tile of one sample (default: all tokens, up to 4096,
                under ReLU / JumpReLU, whose tiles then span 64 MiB of codes over a slice of the features; 64 MiB of
                whole rows, 256 tokens at d_sae = 65 536, under TopK).
            baseline (`torch.FloatTensor` of shape `(d_sae,)`, *optional*): subtracted from the pooled activations
                for the ranking only (a feature's typical pooled value over a reference set: features that fire the
                same way in every sample, e.g. on a prompt template, then rank low). Values are not shifted.
        """
        threshold = self._check_threshold(threshold)
        if pooling not in _POOLINGS:
            raise ValueError(f"Unknown `pooling` {pooling!r}; choose one of {list(_POOLINGS)}.")
        if not isinstance(top_n, int) or top_n < 1:
            raise ValueError(f"`top_n` must be a positive int, got {top_n!r}.")
        if hidden_states.dim() != 3:
            raise ValueError(
                f"`pooled_concepts` expects hidden states of shape (B, T, d_in), got {tuple(hidden_states.shape)}."
            )
        self._check_input(hidden_states)
        batch, num_tokens, _ = hidden_states.shape
        d_sae = self.config.d_sae
        if attention_mask is None:
            attention_mask = torch.ones(batch, num_tokens, device=hidden_states.device)
        elif attention_mask.shape != (batch, num_tokens):
            raise ValueError(
                f"`attention_mask` must have shape {(batch, num_tokens)}, got {tuple(attention_mask.shape)}."
            )
        if baseline is not None and tuple(baseline.shape) != (d_sae,):
            raise ValueError(f"`baseline` must have shape ({d_sae},) (one value per feature), got {tuple(baseline.shape)}.")
        valid = attention_mask.to(torch.bool)  # (B, T)
        n = min(top_n, d_sae)
        device = hidden_states.device
        x = hidden_states.to(self.W_enc.dtype)
        if self.config.apply_b_dec_to_input:
            x = x - self.b_dec  # (B, T, d_in), shared by the selection and the recomputation

        # 1) selection, per sample, in tiles of (token positions) x (features) of which only the valid rows are
        # encoded: the matmul writes into one reused buffer of at most 64 MiB and the bias is added in place
        # (``x @ W_enc + b_enc``, the rounding of `_pre_activation`); the gate is decided once and kept as 1 bit per
        # (token, feature); pooling reduces each tile to one value per feature. Never a whole (T, d_sae) tensor of
        # floats, nor a list of active pairs. Under a per-feature gate (ReLU, JumpReLU) a tile spans all the
        # sample's tokens and a slice of features, so W_enc is streamed (and packed by the BLAS) once per sample,
        # not once per token chunk; TopK's gate reads whole rows, so its tiles are whole rows of `chunk_size` tokens.
        per_feature_gate = self.config.activation != "topk"
        if per_feature_gate:
            token_tile = chunk_size or min(max(num_tokens, 1), _MAX_TOKEN_TILE)
            feature_tile = min(d_sae, max(8, _CHUNK_ELEMENTS // token_tile // 8 * 8))  # multiple of 8: whole bytes
        else:
            token_tile, feature_tile = chunk_size or self._token_chunk(), d_sae
        # max pooling under a gate that opens exactly above a per-feature cut-off (ReLU, JumpReLU with θ >= 0, and
        # τ on top): the pooled value is the column maximum, gated, so the tiles need no masking pass
        upward_closed = pooling == "max" and (
            self.config.activation == "relu"
            or (self.config.activation == "jumprelu" and bool((self.threshold >= 0).all()))
        )
        indices = torch.zeros(batch, n, dtype=torch.long, device=device)
        gate = torch.zeros(batch, num_tokens, n, dtype=torch.bool, device=device)
        zero = torch.zeros((), dtype=x.dtype, device=device)
        with torch.no_grad():
            pooled = torch.zeros(batch, d_sae, device=device, dtype=torch.float32)
            buffer = x.new_empty(min(token_tile, num_tokens) * feature_tile)  # one (rows, features) tile
            bits = torch.zeros(num_tokens, (d_sae + 7) // 8, dtype=torch.uint8, device=device)  # (T, d_sae / 8)
            for b in range(batch):
                tokens = x[b].detach()  # (T, d_in)
                positions = None if bool(valid[b].all()) else valid[b].nonzero().squeeze(1)  # (T_b,) valid tokens
                if upward_closed:
                    column_max = torch.full((d_sae,), float("-inf"), dtype=x.dtype, device=device)  # (d_sae,)
                for start in range(0, num_tokens, token_tile):
                    if positions is None:
                        rows, part = slice(start, start + token_tile), tokens[start : start + token_tile]  # (r, d_in)
                    else:
                        rows = positions[(positions >= start) & (positions < start + token_tile)]  # (r,)
                        if rows.numel() == 0:
                            continue
                        part = tokens.index_select(0, rows)  # (r, d_in)
                    for first in range(0, d_sae, feature_tile):
                        cols = slice(first, min(first + feature_tile, d_sae))
                        width = cols.stop - first
                        tile = buffer[: part.shape[0] * width].view(part.shape[0], width)  # (r, f)
                        pre = torch.mm(part, self.W_enc[:, cols], out=tile).add_(self.b_enc[cols])  # (r, f)
                        if width == d_sae:
                            member = self._membership(pre.unsqueeze(0), threshold)[0]  # (r, d_sae)
                        else:
                            member = self._membership(pre.unsqueeze(0), threshold, features=cols)[0]  # (r, f)
                        bits[rows, first // 8 : (cols.stop + 7) // 8] = _pack_bits(member)  # (r, f / 8)
                        if upward_closed:
                            column_max[cols] = torch.maximum(column_max[cols], pre.amax(0))  # (f,)
                            continue
                        acts = pre.masked_fill_(~member, 0)  # (r, f): the codes, in place
                        if pooling == "max":
                            pooled[b, cols] = torch.maximum(pooled[b, cols], acts.amax(0).float())
                        else:
                            pooled[b, cols] += acts.sum(0).float()
                if upward_closed:  # the gate is open at some token iff it is open at the column maximum
                    opened = self._membership(column_max[None, None], threshold)[0, 0]  # (d_sae,)
                    pooled[b] = torch.where(opened, column_max, zero).float()
                if pooling == "mean":
                    pooled[b] /= valid[b].sum().clamp_min(1)  # rank (and centre) by the mean, as returned
                score = pooled[b : b + 1]  # (1, d_sae)
                if baseline is not None:
                    score = score - baseline.to(pooled)
                score = score.masked_fill(pooled[b : b + 1] <= 0, float("-inf"))  # only features of S(z) are kept
                indices[b] = score.topk(n, dim=-1).indices[0]  # (N,)
                # the selection's own gate at the kept features, read back from the bits: (T, N)
                kept = _unpack_columns(bits, indices[b]) & (pooled[b, indices[b]] > 0)  # (T, N)
                gate[b] = kept if positions is None else kept & valid[b, :, None]
            mask = torch.gather(pooled, 1, indices) > 0  # (B, N)

        # 2) recompute the kept features with gradients on a (B, T, N) slice, gated by the decisions of 1)
        enc_cols = self.W_enc.index_select(1, indices.flatten())  # (d_in, B * N)
        enc_rows = enc_cols.T.reshape(batch, n, -1)  # (B, N, d_in)
        pre = torch.einsum("btd,bnd->btn", x, enc_rows) + self.b_enc[indices][:, None, :]  # (B, T, N)
        token_acts = torch.where(gate, pre, torch.zeros((), dtype=pre.dtype, device=pre.device))  # (B, T, N)
        if pooling == "max":
            values = token_acts.amax(dim=1) if num_tokens else token_acts.new_zeros(batch, n)  # (B, N)
        elif pooling == "sum":
            values = token_acts.sum(dim=1)
        else:
            values = token_acts.sum(dim=1) / valid.sum(dim=1, keepdim=True).clamp_min(1)
        return PooledConcepts(indices=indices, values=values, mask=mask, token_activations=token_acts,
                              pooled=pooled, active=gate)

    # ------------------------------------------------------------------ training helpers
    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder row (feature direction) to unit L2 norm, in place."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_decoder_parallel_grad_(self) -> None:
        """Drop the gradient component along each unit-norm decoder row (keeps rows on the sphere under SGD)."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(-1, keepdim=True)  # (d_sae, 1)
        self.W_dec.grad.sub_(parallel * self.W_dec)

    # ------------------------------------------------------------------ SAELens interop
    @classmethod
    def from_saelens(cls, path, **config_overrides) -> SparseAutoencoder:
        """Load an SAE saved in the SAELens layout (``cfg.json`` + ``sae_weights.safetensors``)."""
        from .saelens import load_saelens

        return load_saelens(cls, path, **config_overrides)

    def save_saelens(self, path, hook_name: str | None = None) -> None:
        """Write the SAELens layout (``cfg.json`` + ``sae_weights.safetensors``) into directory ``path``."""
        from .saelens import save_saelens

        save_saelens(self, path, hook_name=hook_name)


def _register_with_transformers() -> None:
    """``AutoConfig`` / ``AutoModel`` know the SAE as soon as this module is imported (see ``segcompass._registration``)."""
    from transformers import AutoConfig, AutoModel

    AutoConfig.register(SparseAutoencoderConfig.model_type, SparseAutoencoderConfig, exist_ok=True)
    AutoModel.register(SparseAutoencoderConfig, SparseAutoencoder, exist_ok=True)


_register_with_transformers()
