"""SegCompassForReasoningSegmentation (paper §3.1–3.2, Fig. 2–3; DESIGN data flow and decisions 1–3, 5).

Dimension glossary:
    B batch, T tokens, D backbone hidden size, L SAE hook layer (index into hidden_states, 0 = embeddings),
    d_sae SAE features, N concepts kept per sample, d_c codebook width, K slots, C SAM embedding channels,
    h × w SAM embedding grid, m = 4h mask/heatmap grid, (H, W) original image size.

One backbone forward per sequence (prompt + reasoning + <REF_POS> + K concentration tokens) gives both
``hidden_states[L]`` for the SAE and the last-layer states at the K concentration tokens (the slot embeddings e_k).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import AutoModelForImageTextToText, PreTrainedModel, SamVisionModel
from transformers import initialization as init
from transformers.models.sam.modeling_sam import SamPositionalEmbedding

from .answer_format import find_slot_positions
from .configuration_segcompass import SegCompassConfig
from .modeling_components import check_model_type
from .modeling_inference import SegCompassInferenceMixin
from .modeling_outputs import (  # re-exported: the outputs' home is modeling_outputs
    SegCompassOutput,
    SegCompassSegmentation,  # noqa: F401
    SegCompassSegmentationOutput,  # noqa: F401
)
from .modules.answer_items import answer_item_counts
from .modules.concept_interface import SparseConceptInterface
from .modules.concept_path import concept_path
from .modules.image_positions import ImagePositionEmbedding
from .modules.mask_decoder import HeatmapMaskDecoder
from .modules.mask_confidence import MaskConfidenceHead
from .modules.mask_refiner import DEFAULT_DILATIONS, MaskRefiner
from .modules.slot_mapper import SlotMapper
from .sae import SparseAutoencoder
from .sae.feature_dictionary import FeatureDictionaryMixin
from .sam_frame import valid_mask_sizes
from .utils.logging import get_logger

logger = get_logger(__name__)

_PROCESSOR_ONLY_INPUTS = ("sam_pixel_values", "original_sizes", "reshaped_input_sizes", "missing_ref_pos")
"""Processor outputs that are not backbone inputs (the SAM branch and bookkeeping)."""


class SegCompassPreTrainedModel(PreTrainedModel):
    config_class = SegCompassConfig
    base_model_prefix = "segcompass"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock", "LlamaDecoderLayer", "CLIPEncoderLayer"]
    input_modalities = ("image", "text")

    def _init_weights(self, module):
        """PyTorch's default (scale-preserving) init for the heads; the backbone, SAE and SAM vision encoder are
        PreTrainedModels and initialise themselves. N(0, 0.02) everywhere would shrink gradients through the
        stacked small MLPs of the concept interface and slot mapper by many orders of magnitude."""
        if isinstance(module, SparseConceptInterface):
            init.trunc_normal_(module.slot_queries, std=0.02)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if getattr(module, "zero_init", False):  # the mask refiner's and the mask confidence head's outputs: start as the identity
                init.zeros_(module.weight)
                if module.bias is not None:
                    init.zeros_(module.bias)
            elif getattr(module, "initial_bias", None) is not None:  # the slot mapper's last map convolution
                init.constant_(module.bias, module.initial_bias)
            elif module.bias is not None:
                bound = 1.0 / math.sqrt(module.weight[0].numel())
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            init.normal_(module.weight)
        elif isinstance(module, nn.MultiheadAttention):  # its packed input projection is no nn.Linear
            init.xavier_uniform_(module.in_proj_weight)
            if module.in_proj_bias is not None:
                init.zeros_(module.in_proj_bias)
        elif isinstance(module, SamPositionalEmbedding):
            init.normal_(module.positional_embedding, std=module.scale)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class SegCompassForReasoningSegmentation(SegCompassInferenceMixin, FeatureDictionaryMixin,
                                        SegCompassPreTrainedModel):
    r"""Reasoning segmentation with an interpretable sparse-concept bridge.

    Components: ``backbone`` (transformers' own Qwen2.5-VL / LLaVA class), ``sae`` (frozen
    [`SparseAutoencoder`]), ``concept_interface`` (codebook + slot queries + encoder blocks), ``slot_mapper``,
    ``vision_encoder`` (transformers `SamVisionModel`) and ``mask_decoder`` (SAM prompt-encoder mask convolutions +
    two-way mask decoder), and where the config asks for them ``image_positions`` (absolute positions added to the
    backbone's image tokens by a hook on its vision tower), ``mask_refiner`` and ``mask_confidence``.
    ``save_pretrained`` / ``from_pretrained`` also carry ``sae.feature_dictionary`` (``feature_dictionary.json`` beside
    the checkpoint; :mod:`segcompass.sae.feature_dictionary`).
    """

    _feature_dictionary_sae = "sae"

    def __init__(self, config: SegCompassConfig):
        super().__init__(config)
        self.backbone = AutoModelForImageTextToText.from_config(config.backbone_config)
        self.image_positions = None
        if config.image_position_frequencies:
            self.image_positions = ImagePositionEmbedding(config.get_text_config().hidden_size,
                                                          config.image_position_frequencies)
            self.backbone.model.visual.register_forward_hook(self.image_positions.vision_tower_hook, with_kwargs=True)
        self.sae = SparseAutoencoder(config.sae_config)
        self.sae.requires_grad_(False)
        self.concept_interface = SparseConceptInterface(
            d_sae=config.sae_config.d_sae,
            codebook_dim=config.codebook_dim,
            num_slots=config.num_slots,
            num_layers=config.concept_encoder_layers,
            num_heads=config.concept_encoder_heads,
            ffn_dim=config.concept_encoder_ffn_dim,
            value_embedding=config.concept_value_embedding,
        )
        self.slot_mapper = SlotMapper(
            llm_dim=config.get_text_config().hidden_size,
            concept_dim=config.codebook_dim,
            image_dim=config.sam_config.vision_config.output_channels,
            num_heads=config.slot_mapper_heads,
            head_dim=config.slot_mapper_head_dim,
        )
        self.vision_encoder = SamVisionModel(config.sam_config.vision_config)
        self.mask_decoder = HeatmapMaskDecoder(config.sam_config)
        self.mask_refiner = None
        if config.mask_refiner_hidden_size:
            self.mask_refiner = MaskRefiner(
                pixel_scale=config.sam_input_size // config.mask_size,
                hidden_size=config.mask_refiner_hidden_size,
                dilations=tuple(config.mask_refiner_dilations or DEFAULT_DILATIONS),
            )
        self.mask_confidence = None
        if config.mask_confidence_hidden_size:
            self.mask_confidence = MaskConfidenceHead(
                concept_dim=config.codebook_dim,
                image_dim=config.sam_config.vision_config.output_channels,
                hidden_size=config.mask_confidence_hidden_size,
                pixel_scale=config.sam_input_size // config.mask_size,
                num_features=config.sae_config.d_sae,
            )
        self.post_init()

    # ------------------------------------------------------------------ transformers plumbing
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, with a weights file that cannot be read (truncated, corrupt) reported
        as one ``ValueError`` naming the file and the fix instead of the deserializer's message.

        The SAE comes back frozen, as ``__init__`` leaves it: transformers' loader materialises every floating-point
        weight as a new ``nn.Parameter`` with ``requires_grad=True``, so without this a training loop over
        ``model.parameters()`` would silently fine-tune the SAE and its concepts would stop meaning what its
        feature dictionary says."""
        check_model_type(pretrained_model_name_or_path)
        try:
            loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
            (loaded[0] if isinstance(loaded, tuple) else loaded).sae.requires_grad_(False)  # output_loading_info
            return loaded
        except Exception as error:  # safetensors raises its own SafetensorError (not a ValueError / OSError)
            if type(error).__name__ != "SafetensorError" and "deserializ" not in str(error):
                raise
            raise ValueError(
                f"The weights file model.safetensors in '{pretrained_model_name_or_path}' is truncated or corrupt "
                f"({type(error).__name__}: {error}); download or copy the checkpoint again."
            ) from None

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.backbone.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.backbone.get_output_embeddings()

    def generate(self, *args, **kwargs):
        """Text generation with the backbone (the reasoning policy)."""
        return self.backbone.generate(*args, **kwargs)

    def train(self, mode: bool = True):
        super().train(mode)
        self.sae.eval()  # frozen
        return self

    # ------------------------------------------------------------------ input checks
    def _special_ids(self) -> tuple[int, torch.Tensor]:
        if self.config.ref_token_id is None or self.config.slot_token_ids is None:
            raise ValueError(
                "config.ref_token_id / config.slot_token_ids are not set. Add the special tokens with "
                "`SegCompassProcessor.add_special_tokens_to_tokenizer(tokenizer, num_slots)`, make sure the backbone's "
                "embedding matrix has at least len(tokenizer) rows (`model.resize_token_embeddings(len(tokenizer))` "
                "only if it is smaller: Qwen2.5-VL and llava-1.5 ship spare rows) and store the ids in the config "
                "(`ref_token_id`, `slot_token_ids`)."
            )
        return self.config.ref_token_id, torch.tensor(self.config.slot_token_ids)

    def never_generated_token_ids(self) -> list[int]:
        """Tokens ``segment`` never samples: the teacher-forced concentration tokens and the backbone's image/video
        placeholders (a sampled ``<|image_pad|>`` would no longer match the image features in the scoring forward)."""
        _, slot_ids = self._special_ids()
        backbone = self.config.backbone_config
        names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id", "image_token_index")
        placeholders = {getattr(backbone, name, None) for name in names}
        return sorted(set(slot_ids.tolist()) | {int(i) for i in placeholders if isinstance(i, int) and i >= 0})

    def slot_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Positions of the K concentration tokens in each row: (B, T) -> (B, K); each must occur exactly once."""
        ref_id, slot_ids = self._special_ids()
        has_ref = (input_ids == ref_id).any(1)  # (B,)
        if not bool(has_ref.all()):
            rows = (~has_ref).nonzero().flatten().tolist()
            raise ValueError(
                f"`{self.config.ref_token}` is missing from input_ids rows {rows}. Build inputs with "
                "`SegCompassProcessor(..., append_slots=True)` or `processor.append_slot_tokens(...)`, which add "
                f"`{self.config.ref_token}` and the {self.config.num_slots} concentration tokens."
            )
        return find_slot_positions(input_ids, slot_ids, self.config.slot_tokens)  # (B, K)

    def _check_image_embeddings(self, image_embeddings: torch.Tensor, batch: int) -> None:
        size = self.config.image_embedding_size
        expected = (batch, self.config.sam_config.vision_config.output_channels, size, size)
        if tuple(image_embeddings.shape) != expected:
            raise ValueError(
                f"`image_embeddings` must have shape {expected} (B, C, h, w) for this model, got "
                f"{tuple(image_embeddings.shape)}. Compute them with `model.get_image_embeddings(sam_pixel_values)`."
            )

    @property
    def sam_input_size(self) -> int:
        """S: the side of SAM's padded square input frame."""
        return int(self.config.sam_input_size)

    def valid_mask_sizes(self, reshaped_input_sizes) -> torch.LongTensor:
        """``(B, 2)`` unpadded (h, w) on the m × m mask grid from the processor's ``reshaped_input_sizes`` ``(B, 2)``
        (:func:`segcompass.sam_frame.valid_mask_sizes` with this model's m and S)."""
        return valid_mask_sizes(reshaped_input_sizes, self.config.mask_size, self.sam_input_size)

    def _hook_states(self, backbone_outputs) -> torch.Tensor:
        """The SAE's input from a backbone output with hidden states: ``hidden_states[hook_layer]`` (B, T, D)."""
        return backbone_outputs.hidden_states[self.config.sae_config.hook_layer]

    def get_hook_states(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                        **backbone_inputs) -> torch.Tensor:
        """The backbone's residual stream at the SAE's hook layer: ``(B, T, D)`` for ``input_ids`` ``(B, T)``
        (``backbone_inputs``: the processor's image inputs). What the SAE was trained on and what the concept path
        reads; use it to cache SAE training data or to inspect concepts token by token. The processor's SAM inputs
        (``sam_pixel_values``, ``original_sizes``, ``reshaped_input_sizes``) may be passed along and are ignored, so
        ``model.get_hook_states(**processor(image, instruction))`` works."""
        backbone_inputs = {k: v for k, v in backbone_inputs.items() if k not in _PROCESSOR_ONLY_INPUTS}
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                            return_dict=True, **backbone_inputs)
        return self._hook_states(out)

    def get_image_embeddings(self, sam_pixel_values: torch.Tensor) -> torch.Tensor:
        """SAM image keys: (B, 3, S, S) -> (B, C, h, w)."""
        return self.vision_encoder(pixel_values=sam_pixel_values).last_hidden_state

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        sam_pixel_values: torch.FloatTensor | None = None,
        image_embeddings: torch.FloatTensor | None = None,
        reshaped_input_sizes: torch.LongTensor | None = None,
        valid_mask_sizes: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | None = None,
        **backbone_kwargs,
    ) -> SegCompassOutput:
        """
        Args:
            input_ids (`(B, T)`): prompt + completion + <REF_POS> + the K concentration tokens.
            attention_mask (`(B, T)`).
            sam_pixel_values (`(B, 3, S, S)`) or image_embeddings (`(B, C, h, w)`): the SAM branch input; pass
                precomputed embeddings to skip the image encoder. A model with a mask refiner or a mask confidence
                head (``config.mask_refiner_hidden_size``, ``config.mask_confidence_hidden_size``) reads
                ``sam_pixel_values`` as well, so pass them with the embeddings.
            reshaped_input_sizes (`(B, 2)`, *optional*): the processor's (h', w') of each image in the SAM frame;
                the mask decoder then ignores the padding (:meth:`valid_mask_sizes`).
            valid_mask_sizes (`(B, 2)`, *optional*): instead of ``reshaped_input_sizes``: the unpadded (height,
                width) on the m × m mask grid, already computed.
            labels (`(B, T)`, *optional*): language-model labels (-100 to ignore).
            logits_to_keep (*optional*): language-model logits of the last ``logits_to_keep`` positions (0 = all).
                Default: all when ``labels`` are given, else only the last position - the masks need hidden states,
                not the ``(B, T, vocab)`` logits.
            backbone_kwargs: the backbone's image inputs (``pixel_values``, ``image_grid_thw``, ``mm_token_type_ids``
                for Qwen2.5-VL; ``pixel_values`` for LLaVA).
        """
        batch = input_ids.shape[0]
        positions = self.slot_positions(input_ids)  # (B, K); fails fast, before the backbone runs
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if image_embeddings is None:
            if sam_pixel_values is None:
                raise ValueError("Pass `sam_pixel_values` (B, 3, S, S) or precomputed `image_embeddings` (B, C, h, w).")
            image_embeddings = self.get_image_embeddings(sam_pixel_values)
        self._check_image_embeddings(image_embeddings, batch)
        if reshaped_input_sizes is not None:
            if valid_mask_sizes is not None:
                raise ValueError("Pass `reshaped_input_sizes` or `valid_mask_sizes`, not both.")
            valid_mask_sizes = self.valid_mask_sizes(reshaped_input_sizes).to(image_embeddings.device)  # (B, 2)
        if logits_to_keep is None:
            logits_to_keep = 0 if labels is not None else 1
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                            output_hidden_states=True, return_dict=True, logits_to_keep=logits_to_keep,
                            **backbone_kwargs)
        result = self.segment_from_hidden_states(
            input_ids, attention_mask, self._hook_states(out), out.hidden_states[-1], image_embeddings,
            valid_mask_sizes, slot_positions=positions, sam_pixel_values=sam_pixel_values,
        )
        result.loss, result.logits = out.loss, out.logits
        return result

    def segment_from_hidden_states(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        hook_states: torch.Tensor,
        last_states: torch.Tensor,
        image_embeddings: torch.Tensor,
        valid_mask_sizes: torch.LongTensor | None = None,
        slot_positions: torch.LongTensor | None = None,
        sam_pixel_values: torch.FloatTensor | None = None,
    ) -> SegCompassOutput:
        """Everything after the backbone: SAE concepts, concept interface, slot mapper and mask decoder, from the
        hidden states of a backbone forward that already ran (:meth:`forward`; GRPO reads them from the policy's own
        forward, :mod:`segcompass.training.grpo_forward`).

        Args:
            input_ids (`(B, T)`): the sequences, each holding the K concentration tokens once.
            attention_mask (`(B, T)`): 1 on the tokens the concept path reads; it may have holes (tokens the policy
                forward holds but the scoring sequence does not), which the concepts skip.
            hook_states (`(B, T, D)`): ``hidden_states[L]``; last_states (`(B, T, D)`): the last layer's states.
            image_embeddings (`(B, C, h, w)`); valid_mask_sizes (`(B, 2)`, *optional*): see :meth:`forward`.
            slot_positions (`(B, K)`, *optional*): :meth:`slot_positions` of ``input_ids`` when already found.
            sam_pixel_values (`(B, 3, S, S)`, *optional*): the SAM input pixels; required when the model has a mask
                refiner or a mask confidence head, unused otherwise.

        Returns:
            a [`SegCompassOutput`] without ``loss`` / ``logits``.
        """
        positions = self.slot_positions(input_ids) if slot_positions is None else slot_positions  # (B, K)
        slot_embeddings = torch.gather(
            last_states, 1, positions.unsqueeze(-1).expand(-1, -1, last_states.shape[-1])
        )  # (B, K, D)

        config = self.config
        concepts, concept_slots, provenance = concept_path(
            self.sae, self.concept_interface, input_ids, attention_mask, hook_states,
            grouping=config.concept_grouping, item_token_ids=config.answer_item_token_ids,
            ref_token_id=config.ref_token_id, window=config.concept_window, threshold=config.concept_threshold,
            top_n=config.max_concepts, pooling=config.concept_pooling,
            centered=config.concept_selection == "centered",
        )  # PooledConcepts (B, N'), r_k (B, K, d_c), provenance (B, K, N')
        query_embeddings = slot_embeddings  # (B, K, D): what Q_k = MLP([e_k ; r_k]) reads as e_k
        if self.config.slot_query_inputs == "concepts":  # the reasoning reaches the slots only through the concepts
            query_embeddings = torch.zeros_like(slot_embeddings)
        elif self.slot_mapper.training and self.config.slot_embedding_dropout > 0:
            # drop whole e_k vectors so the slot mapper cannot ignore the concept representations r_k
            keep = torch.rand(slot_embeddings.shape[:2], device=slot_embeddings.device) >= self.config.slot_embedding_dropout
            query_embeddings = slot_embeddings * keep.unsqueeze(-1).to(slot_embeddings.dtype)  # (B, K, D)
        key_positions = None
        if self.config.slot_mapper_positional_keys:
            height, width = image_embeddings.shape[-2:]
            key_positions = self.mask_decoder.get_dense_positional_embeddings(height, width)  # (1, C, h, w)
        heatmap_logits, confidence_logits, _ = self.slot_mapper(query_embeddings, concept_slots, image_embeddings,
                                                                key_positions)
        mask_logits, iou_scores = self.mask_decoder(image_embeddings, heatmap_logits, valid_sizes=valid_mask_sizes,
                                                    image_positional_embeddings=key_positions)  # one dense PE for both
        pixel_readers = [name for name in ("mask_refiner", "mask_confidence") if getattr(self, name) is not None]
        if pixel_readers and sam_pixel_values is None:
            sizes = ", ".join(f"{name}_hidden_size={getattr(config, name + '_hidden_size')}" for name in pixel_readers)
            raise ValueError(
                f"This model reads the image pixels after SAM's decoder ({sizes}): pass `sam_pixel_values` (B, 3, "
                f"{self.sam_input_size}, {self.sam_input_size}) from the processor, also when passing precomputed "
                "`image_embeddings`."
            )
        if self.mask_refiner is not None:
            mask_logits = self.mask_refiner(mask_logits, sam_pixel_values)  # (B, K, 4h, 4w)
        if self.mask_confidence is not None:
            confidence_logits = self.mask_confidence(
                confidence_logits, concept_slots, concepts.indices, concepts.values, concepts.mask, mask_logits,
                image_embeddings, sam_pixel_values,
            )  # (B, K)
        if self.config.mask_logit_bias:  # a calibration of the cut, after every head has read the masks
            mask_logits = mask_logits + self.config.mask_logit_bias  # (B, K, m, m)
        return SegCompassOutput(
            heatmap_logits=heatmap_logits,
            confidence_logits=confidence_logits,
            mask_logits=mask_logits,
            iou_scores=iou_scores,
            concept_indices=concepts.indices,
            concept_values=concepts.values,
            concept_mask=concepts.mask,
            slot_concept_attention=provenance,
            concept_token_activations=concepts.token_activations,
            slot_embeddings=slot_embeddings,
            concept_slots=concept_slots,
            image_embeddings=image_embeddings,
            instance_limits=self.instance_limits(input_ids, attention_mask),
        )

    def instance_limits(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor) -> torch.LongTensor | None:
        """`(B,)` the most slots each prediction keeps under ``config.limit_instances_to_answer``: how many objects
        the answer list names (:func:`~segcompass.modules.answer_items.answer_item_counts`; -1 without a list), or
        None when the option is off."""
        if not self.config.limit_instances_to_answer:
            return None
        return answer_item_counts(input_ids, attention_mask, self.config.ref_token_id,
                                  tuple(self.config.answer_item_token_ids))  # (B,)

    # ------------------------------------------------------------------ assembly from parts
    @classmethod
    def from_pretrained_components(
        cls, backbone, sae, sam=None, *, sam_config=None, config_overrides: dict | None = None
    ) -> SegCompassForReasoningSegmentation:
        """Assemble SegCompass from separately pretrained parts; the new heads start random.

        Args:
            backbone: a transformers Qwen2.5-VL / LLaVA model or a path to one.
            sae: a [`SparseAutoencoder`], a path saved with ``save_pretrained``, or a SAELens directory.
            sam: a transformers `SamModel`, a path to one, or an original ``sam_vit_{b,l,h}*.pth`` file.
            sam_config: the `SamConfig` of a ``.pth`` whose size is not ViT-B/L/H (inferred otherwise).
            config_overrides: extra [`SegCompassConfig`] fields (num_slots, special token ids, …).

        The per-component missing / unexpected keys are logged and kept in ``model.component_loading_report``.
        """
        from .modeling_components import assemble_from_components

        return assemble_from_components(cls, backbone, sae, sam, sam_config=sam_config,
                                        config_overrides=config_overrides)


def _register_with_transformers() -> None:
    """``AutoConfig`` / ``AutoModel`` know SegCompass as soon as this module is imported (``segcompass._registration``)."""
    from transformers import AutoConfig, AutoModel

    AutoConfig.register(SegCompassConfig.model_type, SegCompassConfig, exist_ok=True)
    AutoModel.register(SegCompassConfig, SegCompassForReasoningSegmentation, exist_ok=True)


_register_with_transformers()
