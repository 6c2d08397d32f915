"""Configuration of SegCompass (paper §3.1–3.2): backbone MLLM + SAE + concept interface + slot mapper + SAM parts."""

from __future__ import annotations

import math

from transformers import AutoConfig, PreTrainedConfig, SamConfig
from transformers.configuration_utils import SubConfigSpec

from .answer_format import DEFAULT_REF_TOKEN, DEFAULT_SLOT_TOKEN_TEMPLATE, slot_token_strings
from .modules.answer_items import check_concept_grouping
from .modules.concept_interface import VALUE_EMBEDDINGS
from .prediction import check_duplicate_iou
from .sae import SparseAutoencoderConfig

SUPPORTED_BACKBONES = ("qwen2_5_vl", "llava")
POOLINGS = ("max", "mean", "sum")
CONCEPT_SELECTIONS = ("pooled", "centered")
SLOT_QUERY_INPUTS = ("embeddings_and_concepts", "concepts")
"""``SegCompassConfig.slot_query_inputs``: Q_k = MLP([e_k ; r_k]) (the paper) or MLP([0 ; r_k]) (concepts only)."""
CONCEPT_VALUE_EMBEDDINGS = VALUE_EMBEDDINGS


class SegCompassConfig(PreTrainedConfig):
    r"""Configuration of [`SegCompassForReasoningSegmentation`].

    Sub-configs:
        backbone_config: the MLLM (`Qwen2_5_VLConfig` or `LlavaConfig`; a dict with ``model_type`` works).
        sae_config: the frozen [`SparseAutoencoderConfig`]; ``d_in`` must equal the backbone's text hidden size and
            ``hook_layer`` indexes the backbone's ``hidden_states`` (0 = embedding output).
        sam_config: transformers `SamConfig` for the SAM image encoder, prompt-encoder mask convolutions and
            two-way mask decoder.

    Args:
        num_slots (`int`): K, slots (concentration tokens, heatmaps, masks) per sample (paper: 6).
        concept_threshold (`float`): τ; a feature is in the support set S(z) when |h| >= τ at some token
            (paper eq. 4 uses h != 0, i.e. τ = 0).
        max_concepts (`int`): N, concept tokens kept per sample (top-N by pooled activation).
        concept_pooling (`str`): how a feature's activation is pooled over tokens (``max``, ``mean``, ``sum``).
        concept_selection (`str`): how the top-N concepts are ranked. ``"pooled"`` (class default): by pooled
            activation (paper eq. 4 as written); ``"centered"`` (every preset): by pooled activation minus the feature's running mean over
            training batches (a buffer updated in training mode), so features that fire in every sample (the prompt
            template's) do not crowd out the ones that tell samples apart. Measured on the tiny model with
            ``"pooled"``: the top-5 concepts of 51 test samples came from 32 features, four in almost every answer.
        concept_value_embedding (`str`): how h_j enters a concept token. ``"scale"``: h_j · C[j] (the paper's form;
            the pre-norm encoder's LayerNorm then erases h_j; class default); ``"log"`` (every preset): C[j] + MLP([log(1 + h_j),
            log(1 + d_j)]) with d_j the tokens between the feature's last activation and the end of the sequence.
        concept_window (`int`, *optional*): pool the concepts over the last ``concept_window`` valid tokens only
            (the end of the reasoning, where it states its answer, and the slot tokens); ``None`` (default): over
            prompt + reasoning, as in the paper.
        concept_grouping (`str`): ``"sequence"`` (class default, the paper): one support set S(z) pooled over the
            sequence, read by all K slots. ``"answer_items"``: slot k pools its own support set over the k-th item of
            the answer list and reads only that (:mod:`segcompass.modules.answer_items`), so which colour goes with
            which shape survives when the answer names several objects; ``concept_window`` is then unused.
            ``"answer"``: one support set pooled over every item of the answer list, read by all K slots, so the
            objects the reasoning mentioned and rejected stay out of it; ``concept_window`` is then unused.
        answer_item_token_ids (`list[int]`, *optional*): ``[open, separator, close]`` token ids that open, split
            and close the answer list (``"answer"`` and ``"answer_items"`` and ``limit_instances_to_answer``, which
            require them).
        slot_embedding_dropout (`float`): in training mode, the probability of replacing a slot embedding e_k by
            zeros before Q_k = MLP([e_k ; r_k]) (default 0: the paper). The last-layer e_k sees the whole sequence
            and a slot mapper trained without it learns to ignore r_k; dropping e_k makes it use the concepts.
        slot_query_inputs (`str`): what the slot queries read. ``"embeddings_and_concepts"``: Q_k = MLP([e_k ; r_k])
            (the paper; class default). ``"concepts"``: Q_k = MLP([0 ; r_k]): the reasoning reaches the slots only
            through the SAE's concepts (e_k is still computed and returned). Measured on the tiny model, heads
            trained 500 steps on a frozen backbone: with e_k a random SAE costs 2-3 % of teacher-forced cIoU, without
            it 29 %.
        codebook_dim (`int`): d_c, width of codebook entries and concept representations (paper: 512).
        concept_encoder_layers / concept_encoder_heads / concept_encoder_ffn_dim: the Transformer encoder blocks
            over [K slot queries ; N concept tokens].
        slot_mapper_heads / slot_mapper_head_dim: N_h and d_h of the slot mapper's per-head scores (eq. 5).
        slot_mapper_positional_keys (`bool`): add SAM's dense positional embedding to the image keys before W^K
            (every preset), so a slot query can ask for a place ("at the bottom"), not only for an appearance. The
            paper's keys are the SAM image embedding alone (False, the class default).
        image_position_frequencies (`int`): F > 0 adds an
            [`~segcompass.modules.image_positions.ImagePositionEmbedding`] (``model.image_positions``): every merged
            image token of the Qwen2.5-VL backbone gains a learned projection of 4 F Fourier features of its cell's
            centre (zero at initialisation), so a text token reading an image token learns *where* it is, not only
            what it shows. Qwen2.5-VL's ViT and M-RoPE put positions only into attention scores. It is a forward hook
            on the backbone's vision tower that SegCompass installs, so the backbone saved or served alone (vLLM)
            does not carry it. 0 (the class default, the paper and the backbone as released): no module. LLaVA's
            CLIP tower has absolute position embeddings of its own, so the option is for Qwen2.5-VL only. Measured on
            the tiny model (``TinyRecipeConfig.image_position_frequencies``): no gain in validation cIoU.
        confidence_threshold (`float`): slots with σ(c_k) >= this are kept as instances.
        duplicate_iou (`float`, *optional*): a kept slot whose mask overlaps a more confident kept slot's with IoU >=
            this is dropped as a copy of the same instance (:func:`segcompass.prediction.drop_duplicate_slots`; the
            pipeline, the evaluation and the analyses apply it). None (the class default, the paper): every slot
            past the threshold is an instance.
        limit_instances_to_answer (`bool`): keep at most as many slots as the answer list names objects, the most
            confident first (``target : a , b .`` names two; :func:`segcompass.modules.answer_items.answer_item_counts`;
            needs ``answer_item_token_ids``); the model returns the limit as ``instance_limits`` and every consumer of
            the prediction rule passes it (:func:`segcompass.prediction.kept_instances`). A sequence without an answer
            list has no limit. False (the class default, the paper): the threshold alone decides. Measured on the
            tiny model (200 test samples, generated reasoning, threshold re-tuned 0.30 -> 0.20): cIoU 0.512 -> 0.557.
        mask_refiner_hidden_size (`int`): width of the [`~segcompass.modules.mask_refiner.MaskRefiner`] that refines
            each slot's mask logits from the SAM input pixels at the mask grid (SAM's decoder sees nothing finer than
            its image embedding, so small objects get blurred outlines); 0 (the class default, the paper): no refiner.
            A model with a refiner needs ``sam_pixel_values`` even when precomputed ``image_embeddings`` are passed.
        mask_refiner_dilations (`list[int]`, *optional*): the refiner's 3 x 3 convolutions, one per dilation (default
            ``[1, 2, 4, 1]``).
        mask_confidence_hidden_size (`int`): width of the [`~segcompass.modules.mask_confidence.MaskConfidenceHead`]
            that adds to each slot's confidence logit a residual from what its final mask covers (mask-pooled image
            embedding and pixels, area, centre, spread) compared with r_k; F_conf alone reads only the query-key
            scores, never the mask. 0 (the class default, the paper): F_conf alone. Like the refiner, it needs
            ``sam_pixel_values`` even when precomputed ``image_embeddings`` are passed.
        mask_logit_bias (`float`): a constant added to the returned mask logits, after the refiner and the mask
            confidence head have read them, so every consumer that cuts a mask at logit 0 (probability 0.5) cuts the
            decoder's logits at ``-mask_logit_bias`` (bilinear upsampling commutes with a constant); a calibration of
            where a pixel counts as the object, like ``confidence_threshold`` for the slots. 0.0 (the class default,
            the paper): the decoder's own cut. The tiny recipe tunes it on validation with the confidence threshold
            (``TinyRecipeConfig.mask_logit_biases``).
        ref_token (`str`): the reference token ending the sampled response.
        slot_token_template (`str`): concentration token names, formatted with the slot index.
        ref_token_id / slot_token_ids: their ids in the tokenizer (set by the processor helpers).

    The class defaults are the paper's literal concept path, so a ``config.json`` saved before these options existed
    loads as the same model; :meth:`from_preset` (and the recipes) use :data:`segcompass.presets.CONCEPT_PATH`.
    """

    model_type = "segcompass"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2_5_vl"),
        "sae_config": SparseAutoencoderConfig,
        "sam_config": SamConfig,
    }

    backbone_config: dict | PreTrainedConfig | None = None
    sae_config: dict | PreTrainedConfig | None = None
    sam_config: dict | PreTrainedConfig | None = None
    num_slots: int = 6
    concept_threshold: float = 0.0
    max_concepts: int = 256
    concept_pooling: str = "max"
    concept_selection: str = "pooled"
    concept_value_embedding: str = "scale"
    slot_embedding_dropout: float = 0.0
    concept_window: int | None = None
    concept_grouping: str = "sequence"
    answer_item_token_ids: list[int] | None = None
    slot_query_inputs: str = "embeddings_and_concepts"
    codebook_dim: int = 512
    concept_encoder_layers: int = 2
    concept_encoder_heads: int = 8
    concept_encoder_ffn_dim: int = 2048
    slot_mapper_heads: int = 4
    slot_mapper_head_dim: int = 64
    slot_mapper_positional_keys: bool = False
    image_position_frequencies: int = 0
    confidence_threshold: float = 0.5
    duplicate_iou: float | None = None
    limit_instances_to_answer: bool = False
    mask_refiner_hidden_size: int = 0
    mask_refiner_dilations: list[int] | None = None
    mask_confidence_hidden_size: int = 0
    mask_logit_bias: float = 0.0
    ref_token: str = DEFAULT_REF_TOKEN
    slot_token_template: str = DEFAULT_SLOT_TOKEN_TEMPLATE
    ref_token_id: int | None = None
    slot_token_ids: list[int] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        backbone_type = self.backbone_config.model_type
        if backbone_type not in SUPPORTED_BACKBONES:
            raise ValueError(
                f"Unsupported backbone model_type {backbone_type!r}; SegCompass supports {list(SUPPORTED_BACKBONES)}."
            )
        text = self.backbone_config.get_text_config()
        if self.sae_config.d_in != text.hidden_size:
            raise ValueError(
                f"sae_config.d_in={self.sae_config.d_in} but the backbone's hidden size is {text.hidden_size}; the SAE "
                "must be trained on this backbone's hidden states (see `segcompass train-sae`)."
            )
        if not 0 <= self.sae_config.hook_layer <= text.num_hidden_layers:
            raise ValueError(
                f"sae_config.hook_layer={self.sae_config.hook_layer} is outside 0..{text.num_hidden_layers} "
                "(hidden_states indices of this backbone; 0 = embedding output)."
            )
        if self.num_slots < 1:
            raise ValueError(f"`num_slots` must be >= 1, got {self.num_slots}.")
        if self.max_concepts < 1:
            raise ValueError(f"`max_concepts` must be >= 1, got {self.max_concepts}.")
        if self.concept_threshold < 0:
            raise ValueError(f"`concept_threshold` (τ) must be >= 0, got {self.concept_threshold}.")
        if self.concept_pooling not in POOLINGS:
            raise ValueError(f"`concept_pooling` must be one of {list(POOLINGS)}, got {self.concept_pooling!r}.")
        if self.concept_window is not None and self.concept_window < 1:
            raise ValueError(f"`concept_window` must be None or >= 1 tokens, got {self.concept_window}.")
        check_concept_grouping(self.concept_grouping)
        needs_items = [f"concept_grouping={self.concept_grouping!r}"] if self.concept_grouping != "sequence" else []
        if not isinstance(self.limit_instances_to_answer, bool):
            raise ValueError(f"`limit_instances_to_answer` must be True or False, got {self.limit_instances_to_answer!r}.")
        if self.limit_instances_to_answer:
            needs_items.append("limit_instances_to_answer=True")
        if needs_items and (self.answer_item_token_ids is None or len(self.answer_item_token_ids) != 3):
            raise ValueError(
                f"`{' and '.join(needs_items)}` needs `answer_item_token_ids` = [open, separator, close] token ids "
                f"(e.g. the ids of ':', ',' and '.'), got {self.answer_item_token_ids!r}."
            )
        if not 0.0 <= self.slot_embedding_dropout < 1.0:
            raise ValueError(f"`slot_embedding_dropout` must be in [0, 1), got {self.slot_embedding_dropout}.")
        if (isinstance(self.image_position_frequencies, bool) or not isinstance(self.image_position_frequencies, int)
                or self.image_position_frequencies < 0):
            raise ValueError(f"`image_position_frequencies` must be an int >= 0 (0: no image position embedding), got "
                             f"{self.image_position_frequencies!r}.")
        if self.image_position_frequencies and backbone_type != "qwen2_5_vl":
            raise ValueError(
                f"`image_position_frequencies={self.image_position_frequencies}` is for a Qwen2.5-VL backbone, whose "
                f"vision tower has no absolute position embedding; this backbone is {backbone_type!r} (LLaVA's CLIP "
                "tower has its own); set it to 0."
            )
        if self.slot_query_inputs not in SLOT_QUERY_INPUTS:
            raise ValueError(
                f"`slot_query_inputs` must be one of {list(SLOT_QUERY_INPUTS)}, got {self.slot_query_inputs!r}."
            )
        if self.concept_selection not in CONCEPT_SELECTIONS:
            raise ValueError(
                f"`concept_selection` must be one of {list(CONCEPT_SELECTIONS)}, got {self.concept_selection!r}."
            )
        if self.concept_value_embedding not in CONCEPT_VALUE_EMBEDDINGS:
            raise ValueError(
                f"`concept_value_embedding` must be one of {list(CONCEPT_VALUE_EMBEDDINGS)}, got "
                f"{self.concept_value_embedding!r}."
            )
        if self.codebook_dim % self.concept_encoder_heads:
            raise ValueError(
                f"`codebook_dim`={self.codebook_dim} must be divisible by `concept_encoder_heads`="
                f"{self.concept_encoder_heads}."
            )
        check_duplicate_iou(self.duplicate_iou)
        if not 0.0 <= self.confidence_threshold <= 1.0:
            raise ValueError(
                f"`confidence_threshold` is a probability in [0, 1], got {self.confidence_threshold}."
            )
        bias = self.mask_logit_bias
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias):
            raise ValueError(f"`mask_logit_bias` must be a finite number (a logit added to every mask logit; 0.0: the "
                             f"decoder's own cut), got {bias!r}.")
        vision_channels = self.sam_config.vision_config.output_channels
        if vision_channels != self.sam_config.mask_decoder_config.hidden_size:
            raise ValueError(
                f"SAM vision output_channels={vision_channels} must equal mask_decoder hidden_size="
                f"{self.sam_config.mask_decoder_config.hidden_size}."
            )
        if not isinstance(self.mask_refiner_hidden_size, int) or self.mask_refiner_hidden_size < 0:
            raise ValueError(
                f"`mask_refiner_hidden_size` must be an int >= 0 (0: no mask refiner), got {self.mask_refiner_hidden_size!r}."
            )
        if self.mask_refiner_dilations is not None and (
                not self.mask_refiner_dilations or any(not isinstance(d, int) or d < 1 for d in self.mask_refiner_dilations)):
            raise ValueError(
                f"`mask_refiner_dilations` must be None or a non-empty list of ints >= 1 (one 3x3 convolution per "
                f"dilation, e.g. [1, 2, 4, 1]), got {self.mask_refiner_dilations!r}."
            )
        if not isinstance(self.mask_confidence_hidden_size, int) or self.mask_confidence_hidden_size < 0:
            raise ValueError(
                f"`mask_confidence_hidden_size` must be an int >= 0 (0: the paper's confidence head alone), got "
                f"{self.mask_confidence_hidden_size!r}."
            )
        for name in ("mask_refiner_hidden_size", "mask_confidence_hidden_size"):
            if getattr(self, name) and self.sam_input_size % self.mask_size:
                raise ValueError(
                    f"`{name}` reads the {self.sam_input_size} px SAM input at the {self.mask_size} x "
                    f"{self.mask_size} mask grid; the side must be a whole multiple of the grid. Set `{name}=0` or "
                    "change the SAM vision image_size / patch_size."
                )
        if self.slot_token_ids is not None and len(self.slot_token_ids) != self.num_slots:
            raise ValueError(
                f"`slot_token_ids` has {len(self.slot_token_ids)} ids but num_slots={self.num_slots}."
            )

    def get_text_config(self, *args, **kwargs):
        """The backbone language model's config (generation utilities and TRL read vocab/hidden sizes here)."""
        backbone = getattr(self, "backbone_config", None)
        if backbone is None:  # during construction, before sub-configs exist
            return super().get_text_config(*args, **kwargs)
        return backbone.get_text_config(*args, **kwargs)

    @property
    def backbone_type(self) -> str:
        return self.backbone_config.model_type

    @property
    def slot_tokens(self) -> list[str]:
        return slot_token_strings(self.num_slots, self.slot_token_template)

    @property
    def image_embedding_size(self) -> int:
        """h = w of the SAM image embedding grid (masks and heatmaps live on a 4h × 4w grid)."""
        vision = self.sam_config.vision_config
        return vision.image_size // vision.patch_size

    @property
    def mask_size(self) -> int:
        return 4 * self.image_embedding_size

    @property
    def sam_input_size(self) -> int:
        """Side S of the square SAM input frame (``sam_pixel_values`` are ``(B, 3, S, S)``)."""
        return self.sam_config.vision_config.image_size

    @classmethod
    def from_preset(cls, name: str, **overrides) -> SegCompassConfig:
        """A named configuration: ``qwen2.5-vl-7b``, ``llava-1.5-7b``, ``llava-1.5-13b`` or ``tiny``.

        The full-size presets are configurations only (no weights); ``tiny`` builds a random model in about a
        second on CPU (see :mod:`segcompass.testing`).
        """
        from .presets import PRESETS

        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
        kwargs = PRESETS[name]()
        kwargs.update(overrides)
        return cls(**kwargs)
