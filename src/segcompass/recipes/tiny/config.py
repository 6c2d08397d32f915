"""The tiny recipe's settings: :class:`TinyRecipeConfig` (defaults = the shipped model) and where it ships."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...answer_format import THINK_CLOSE, THINK_OPEN
from ...modules.answer_items import check_concept_grouping
from ...prediction import check_duplicate_iou
from ...presets import default_model_dir
from ...training.losses import check_loss_option

THINK_TOKENS = (THINK_OPEN, THINK_CLOSE)


DEFAULT_MODEL_DIR = default_model_dir()
"""Where the shipped ``segcompass-tiny-synthetic`` checkpoint lives inside the package
(:func:`segcompass.presets.default_model_dir`)."""


GRPO_SCALE_REWARDS = ("group", "batch", "none")
"""The values of TRL's ``GRPOConfig.scale_rewards`` (its ``True`` / ``False`` spell "group" / "none")."""
CONFIDENCE_STAGE_TARGETS = ("mask_iou", "assigned_iou")
"""``TinyRecipeConfig.confidence_stage_targets``: the :func:`~segcompass.training.losses.confidence_targets_for` kinds
the confidence stage can compute from the cached masks alone."""


def check_backbone_image_side(side: int) -> int:
    """``side`` if it is a positive multiple of 28 (Qwen2.5-VL patch 14 x merge 2), else a ValueError naming it: the one
    check of ``TinyRecipeConfig.backbone_image_side`` and :func:`~segcompass.recipes.tiny.build.set_backbone_image_side`."""
    if side < 28 or side % 28:
        raise ValueError(f"backbone_image_side={side} must be a positive multiple of 28 (Qwen2.5-VL patch 14 x merge "
                         "2); e.g. 112.")
    return side


@dataclass
class TinyRecipeConfig:
    """Sizes, data and schedule of the tiny recipe (defaults: the shipped ``segcompass-tiny-synthetic`` model).

    Architecture:
        image_size: side S of the synthetic images (and of the SAM frame).
        num_slots: K concentration tokens / heatmaps / masks per sample.
        text_hidden_size, text_layers, text_heads, text_kv_heads, text_intermediate_size: the Qwen2 text model.
        vision_hidden_size, vision_depth: the Qwen2.5-VL ViT; ``backbone_image_side`` is the side the backbone
            image processor resizes to (``(side / 28) ** 2`` image tokens). A run continued from a checkpoint with
            fewer ``text_layers`` / ``vision_depth`` grows it by layers on top that start as the identity
            (:mod:`segcompass.training.growth`); the new layers train in an anchored reasoning stage. A continued run
            with another ``backbone_image_side`` shows the backbone images of that side
            (:func:`~segcompass.recipes.tiny.build.set_backbone_image_side`; no weight is tied to the token grid),
            which the anchored reasoning stage must then teach it to see.
        sam_hidden_size, sam_layers, sam_patch_size, sam_mlp_dim: the SAM ViT (``image_size / sam_patch_size``
            grid, masks on a 4x finer grid); the mask decoder has the same width. A run continued with a smaller
            ``sam_patch_size`` that divides the earlier one cuts the same input into finer patches
            (:func:`~segcompass.training.sam_grid.refine_sam_grid`: every weight carried over, the refiner started
            again), which the concept stage must then train.
        sae_expansion: d_sae = sae_expansion * text_hidden_size; hook_layer: L (index into hidden_states).
        codebook_dim, max_concepts, concept_layers: concept interface width, N and encoder depth.
        slot_embedding_dropout, concept_window: ``SegCompassConfig`` options of the concept path.
    Data:
        num_train, num_validation, num_test: synthetic samples per split (base seed ``data_seed``).
    Schedule:
        batch_size, lm_warmup_steps, sae_sequences, sae_epochs, joint_steps, grpo_steps, learning_rate.
        learning_rate: the peak of every head stage's cosine schedule (joint, concept, refiner). The shipped model's
            last run, continuing a trained checkpoint, lowered it (``--set learning_rate=0.0003``): in its concept
            stage the matched slots' mask IoU on the training batches rose 0.72 -> 0.75 over 2000 steps, where a
            concept stage at 1e-3 with ``lambda_snap=1`` had pulled it from 0.71 down to 0.5 within 500 steps (the two
            changes were not separated).
        grpo_steps: the GRPO stage's steps (0: skipped). With the paper's per-component learning-rate multipliers, 16
            steps move the heads (slot mapper weights by ~2 % relative) without the reward improving anything in so
            few steps: after a refiner stage, they lowered teacher-forced test cIoU 0.640 -> 0.615 (the refiner had
            trained for the heads before them). With the ``grpo_*`` settings below (their defaults), 800 steps on the
            shipped model (after retraining its confidence head, 37 min on 2 cores) left the reward flat (mean of the
            first / last fifth of the logged steps 0.77 / 0.78) and cIoU where it was: 1200 validation samples 0.646 ->
            0.641, the first 200 test samples 0.708 -> 0.700, teacher-forced 0.779 -> 0.765, exact targets
            0.695 -> 0.70; at ``grpo_learning_rate=2e-4`` 300 steps lowered validation cIoU (first 1000) 0.643 ->
            0.617. So the embedded model runs none.
        grpo_learning_rate, grpo_prompts, grpo_num_generations, grpo_temperature, grpo_scale_rewards,
            grpo_head_lr_multiplier: the GRPO stage's backbone learning rate, prompts per step, rollouts per prompt,
            sampling temperature, TRL's ``scale_rewards`` and the learning-rate multiplier of the codebook, slot mapper
            and mask decoder (the paper's 25 / 80 / 10 moved the trained heads too far, see ``grpo_steps``). The model
            writes nearly deterministic reasoning (token entropy ~0.05 at temperature 1), so 4 rollouts at
            temperature 1 mostly agree and their mask rewards differ by ~1e-4; TRL's default per-group std scaling
            blows that noise up to unit advantages. Temperature 1.3 with 8 rollouts gives groups that disagree on the
            targets, and ``scale_rewards="none"`` keeps the advantages at the reward's own scale.
        lm_learning_rate: the LM warm-up's peak learning rate (None: ``learning_rate``); a run restarted at the LM
            warm-up from a trained backbone (``train_tiny(restart_at="lm_warmup")``) continues it at a lower one.
        vision_pretrain_steps: steps (batch ``2 * batch_size``) of dense colour / kind / size classification from
            the SAM image embedding before anything else (the from-scratch SAM encoder learns what the slot queries
            ask for); probe_weight: weight of the same auxiliary loss during joint training (the probe is
            discarded, never saved). probe_kind_weight, probe_pos_weight: the backbone token probe's weight on its
            kind outputs and on positives (see ``TokenProbe``); scene_probe_kind_weight: the SAM probe's weight on its
            kind map (see ``SceneProbe``). Measured on 500-step probe runs: kind F1 of the ViT's tokens 0.05 -> 0.40
            with 8 / 8; per-pixel kind accuracy of the SAM encoder after 200 steps 0.22 -> 0.29 with 4.
        lambda_conf: λ_c of :func:`~segcompass.training.losses.segmentation_losses` (paper 0.2; higher calibrates
            the slot confidences faster in a short run).
        generated_share, generated_pool: during joint training, each sample among the first ``generated_pool``
            training samples is, with probability ``generated_share``, fed to the mask path with the model's own
            greedy reasoning (generated once after the LM warm-up, no LM loss on it) instead of the reference, so
            the mask path learns from what it sees at inference.
        misdescription_share: in joint training, the concept and refiner stages and the confidence stage, each
            sample fed with its reference reasoning is, with this probability, fed instead with that reasoning with
            one target's size or region one step off everywhere it is named
            (:func:`~segcompass.data.synthetic.misdescribe_one_target`; no LM loss on it), and the true masks as
            targets, so the mask path learns to find the shape a reasoning describes approximately. 0 (default): the
            reference alone. Measured on the shipped model (first 1000 validation samples): 123 of its answers name
            the right shapes with one size or region word wrong; their I / U is 0.63 against 0.83 for answers that
            are right word for word, and they hold 17 % of the union it misses. Teacher-forced with one target
            misdescribed, the right masks stay among the slots (oracle choice 0.812 -> 0.804) but the confidences
            follow the words (cIoU 0.760 -> 0.686). Continuing it (validation-1200 cIoU; shipped 0.651): 1000
            concept-stage steps at learning rate 5e-5 with ``generated_share=0.5`` 0.652, the same with 0.3 here
            0.645, the confidence head alone with 0.5 here 0.653 (misdescribed cIoU 0.705); not adopted.
        sae_l1_ratio: the SAE's L1 coefficient as a fraction of the RMS norm of the centred activations.
        concept_steps: steps of the concept stage after joint training: the model switches to
            ``slot_query_inputs="concepts"`` (Q_k = MLP([0 ; r_k]): the reasoning reaches the slots only through the
            SAE's concepts) and its heads and SAM encoder train on the frozen backbone (segmentation losses,
            ``generated_share`` of generated reasoning, no LM loss). 0 keeps the paper's Q_k = MLP([e_k ; r_k]).
            Measured by continuing one earlier run with ``concept_grouping="answer"`` (200 test samples, generated
            reasoning): test cIoU 0.404 after 2000 steps, 0.476 after 4000, 0.512 after 4000 more on top of those.
            After four reasoning rounds had changed what the model writes (the stop-38 model, whose concept path was
            last trained at stop 36), two more 2000-step concept stages moved validation-1200 cIoU 0.699 -> 0.711 ->
            0.723 and test cIoU 0.737 -> 0.742 -> 0.753 (the shipped model).
        matching_source, confidence_targets: the segmentation losses' options
            (:func:`~segcompass.training.losses.segmentation_losses`) in joint training: the paper's ``"heatmap"`` /
            ``"matched"``. concept_matching_source, concept_confidence_targets: the same in the concept stage, which
            trains the heads the model ships with: ``"mask"`` / ``"mask_iou"`` match the decoder masks users get and
            teach every slot's confidence its mask's IoU with the nearest target. Measured on 400-step concept-stage
            proxies (96 test samples, reference reasoning, cIoU at the best threshold): 0.406 paper targets, 0.427
            mask matching, 0.439 both. concept_grouping: the ``SegCompassConfig.concept_grouping`` the concept stage
            switches to (``"answer"`` / ``"answer_items"`` read the answer list between ``:``, ``,`` and ``.``).
        mask_refiner_hidden_size: the model's ``SegCompassConfig.mask_refiner_hidden_size`` (0: no refiner): a
            :class:`~segcompass.modules.mask_refiner.MaskRefiner` that refines each slot's mask logits from the SAM
            input pixels. refiner_steps: steps of the refiner stage after the concept stage, in which only the refiner
            trains (everything else frozen and in eval mode; the concept stage's matching source and confidence
            targets, ``generated_share`` of generated reasoning).
        lambda_mask_bce: ``segmentation_losses(lambda_mask_bce=)`` in joint training and the concept stage: a pixel
            BCE on the matched decoder mask logits beside the paper's soft dice (0: the paper).
            refiner_lambda_mask_bce: the same weight in the refiner stage. Measured by continuing the shipped model with
            a 32-wide refiner (200 test samples): with the soft dice alone (0) the refiner stage lowered cIoU 0.557 ->
            0.538 (teacher-forced 0.609 -> 0.578): the dice of probabilities does not place the logits' sign.
        lambda_snap: weight of :func:`~segcompass.training.losses.instance_snap_loss` in joint training and the
            concept stage (0: off, the paper): every slot's mask, matched or not, is pulled onto the scene's shape it
            overlaps most (any shape, target or not) or toward empty. refiner_lambda_snap: the same in the refiner
            stage; the segmentation losses train only the matched slots, toward the targets, so a refiner trained
            with them alone sees few of the masks it refines at inference. Measured in a concept stage continuing the
            stop-26 model (``--set lambda_snap=1 concept_steps=3000``, learning rate 1e-3): the matched slots' mask
            IoU on the training batches fell 0.71 -> 0.53 over 1600 steps while the snap losses fell (dice 0.157 ->
            0.124), so the concept stage keeps 0 (the run was stopped there; its learning rate was 1e-3, see
            ``learning_rate``).
        mask_confidence_hidden_size: the model's ``SegCompassConfig.mask_confidence_hidden_size`` (0: the paper's
            F_conf alone): a :class:`~segcompass.modules.mask_confidence.MaskConfidenceHead` that corrects each slot's
            confidence from what its final mask covers. confidence_epochs, confidence_learning_rate: the confidence
            stage after the refiner stage, in which only that head trains, on its inputs computed once per training
            sample with the reference reasoning and per pooled sample with the generated one
            (:mod:`segcompass.recipes.tiny.confidence`; target: each slot's mask IoU with its nearest target).
            Measured on the stop-25 model, before the head (200 test samples, generated reasoning, threshold tuned on
            validation): with the confidences of the best slots instead of the model's, cIoU would be 0.72 instead
            of 0.555 (teacher-forced 0.78 instead of 0.636): which slots are kept costs more than the masks.
            The pool's size matters little once the head exists: retraining the shipped model's head with every
            training sample's generated reasoning (``generated_pool=16000`` instead of 6144; not shipped) gave test
            cIoU 0.708 -> 0.719 (teacher-forced 0.779 -> 0.789) but 0.643 -> 0.642 on the first 1000 validation
            samples. confidence_stage_targets: the stage's BCE targets
            (:func:`~segcompass.training.losses.confidence_targets_for`): ``"mask_iou"`` (each slot's mask IoU with
            its nearest target) or ``"assigned_iou"`` (that IoU for one slot per target, assigned by the largest total
            IoU; 0 for a second, worse slot on a covered target). Measured by retraining the stop-28 model's head
            with ``"assigned_iou"``: test cIoU 0.708 -> 0.711, but on the first 1000 validation samples 0.643 ->
            0.633 (teacher-forced 0.749 -> 0.743), so the recipe keeps ``"mask_iou"``; where two slots lie on one
            target with IoUs at least 0.05 apart, the ``"mask_iou"`` head already ranks the better one first in 75 %
            of cases (teacher-forced, 232 such targets).
        reasoning_steps, reasoning_samples, reasoning_learning_rate: the reasoning stage after joint training (or, in
            a continued run, before anything else): next-token loss on ``reasoning_samples`` training samples the
            heads did not see (indices from ``num_train`` on; a chain of continued runs reuses them), training only
            the decoder layers above the SAE's hook layer, so the concepts (and, with the concept stage's
            ``slot_query_inputs="concepts"``, the masks) stay exactly as they were and only the written reasoning
            changes (0 steps: no stage). The generated-reasoning pool is made again after it. Measured on the shipped
            model (200 test samples, one process): 4000 steps on 32000 samples raised the answers naming exactly the
            right targets 0.355 -> 0.59 (descriptions with a wrong region 43 % -> 15 %) with cIoU 0.557 -> 0.546.
        reasoning_anchor_weight: 0 (default) trains only the layers above the hook, as above. > 0: the reasoning stage
            also trains the vision tower and the decoder layers below the hook (perception), with this weight times
            :func:`~segcompass.training.freezing.hook_state_anchor_loss` keeping ``hidden_states[L]`` of the text tokens
            near a frozen copy's, so the concepts of a given reasoning text move little. Measured by continuing the
            stop-27 model on fresh samples (one process, weight 1, heads and threshold unchanged; 200 test samples):
            2000 steps at learning rate 3e-4: answers naming exactly the right targets 0.61 -> 0.635, test cIoU
            0.634 -> 0.665 (teacher-forced 0.760 -> 0.765), the SAE's FVE 0.961 -> 0.958, relative anchor distance
            ~0.005; 4000 steps at 5e-4: right targets 0.675, cIoU 0.697 (teacher-forced 0.768), N-acc 1.0 -> 0.917,
            FVE 0.953, anchor distance 0.013 at the peak learning rate, 0.007 at the end.
            Continuing the shipped model (itself 6000 such steps at 5e-4 on 80000 samples, 2 processes) with 6000
            more on the same samples, then 1500 concept-stage and 800 refiner steps (not shipped): right targets
            0.695 -> 0.705, exact descriptions 0.827 -> 0.846, but teacher-forced cIoU 0.779 -> 0.775, test cIoU
            0.708 -> 0.693 (negation 0.841 -> 0.725; 0.69-0.70 at every threshold from 0.1 to 0.35) and the SAE's
            FVE 0.946 -> 0.915. The same 1500 concept-stage and 800 refiner steps alone on the shipped model cost
            more (teacher-forced cIoU 0.779 -> 0.739, test cIoU 0.685): the head stages, not the second pass, lost
            the cIoU. 6000 more steps on 160000 samples (half of them new) with only the confidence head retrained
            (not shipped): right targets 0.695 -> 0.705, exact reasoning 0.615 -> 0.64, teacher-forced cIoU 0.779 ->
            0.788, test cIoU 0.708 -> 0.690, FVE 0.908; on the first 1000 validation samples cIoU 0.643 -> 0.639
            with right targets 0.68 -> 0.70. More perception passes move the reasoning, not the cIoU: the
            wrong-target answers (half the union) score 0.45 either way.
        reasoning_position_probe_weight: with ``reasoning_anchor_weight > 0``, the weight of a
            :class:`~segcompass.recipes.tiny.data.PositionProbe` (each merged image token's absolute row and column,
            each centroid's absolute bins; a new head, not saved) added to the reasoning stage's loss, so the vision
            tower writes absolute positions into the tokens (0: off). Measured by continuing the shipped model (bias
            0.75) with 3000 anchored steps at 5e-4 and the confidence head retrained, with weight 0.2 against the same
            run without it (1200 validation samples / 200 test samples, generated reasoning): with the probe
            (probe loss 3.0 -> 0.10) descriptions with a wrong region 9.3 % -> 6.3 % but a wrong kind 2.4 % -> 3.7 %,
            validation cIoU 0.651 -> 0.634, test 0.715 -> 0.729, and the SAE's FVE on the final backbone 0.946 -> 0.47
            (the image tokens' hook states move); without it validation 0.645, test 0.740, right targets 0.68 -> 0.70
            (validation) and 0.695 -> 0.735 (test), FVE 0.932. Neither is shipped: on the 1200 validation samples
            that choose the model neither beats it, and the test split does not choose.
        reasoning_decision_weight: the weight of a second next-token loss in the reasoning stage, over the tokens of
            each reference reasoning's decision and target line only (after the last ``:`` before ``target``,
            :func:`~segcompass.recipes.tiny.diagnostics.decision_positions`): the facts are most of the tokens and
            most of them are easy, so the stage's mean loss says little about which shape wins (0: off). Measured by
            continuing the stop-36 model with 4000 anchored steps at 3e-4 on 160000 samples, the confidence head
            retrained (1200 validation samples, generated reasoning): without it cIoU 0.667 -> 0.682, decisions right
            given right facts 0.794 -> 0.824; with weight 2 cIoU 0.687, decisions 0.833 (spatial 0.634 -> 0.674 ->
            0.689, spatial cIoU 0.474 -> 0.480 -> 0.540). The embedded model is the weight-2 run continued twice more
            the same way (240000, then 320000 samples): cIoU 0.697, then 0.699, decisions 0.838, then 0.859.
        image_position_frequencies: the model's ``SegCompassConfig.image_position_frequencies`` (0: none): absolute
            Fourier positions, through a zero-initialised projection, added to every merged image token, so the
            language model reads where a shape is from the token's content (Qwen2.5-VL puts positions only into
            attention scores). A continued run adds the module at zero; it trains with the backbone in the LM warm-up
            and in an anchored reasoning stage (``reasoning_anchor_weight > 0``; the unanchored stage freezes
            everything below the SAE's hook layer, this module included). Measured by continuing the shipped model
            (1500 anchored steps, first 1000 validation samples, no confidence retraining): cIoU 0.622 -> 0.628,
            right targets 0.673 -> 0.674; with ``text_layers=6 vision_depth=4`` as well 0.633 / 0.694, and that run
            in full (3000 steps, confidence head retrained) gave validation cIoU 0.648 against 0.645 without the three
            (test 0.703 against 0.740): not shipped (0 is the default).
    Evaluation:
        eval_batch_size, max_new_tokens, thresholds (candidates tuned on validation:
            :func:`~segcompass.recipes.tiny.evaluation.tune_threshold`; 1200 validation samples: 96 left the choice
            between 0.15 and 0.25 to noise, and with 400 the shipped model's curve was flat within 0.007 from 0.25 to
            0.6 and its maximum fell at 0.5 by 0.005, where test T-acc is 0.932 against 0.983 at 0.25, which 1200
            samples choose). duplicate_iou: the model's ``SegCompassConfig.duplicate_iou`` (set
            before the threshold is tuned): with confidences that estimate mask IoU, two slots on one shape are both
            confident, and the second is dropped as a copy (test samples with targets whose instance count is right:
            78 -> 102 of 176 on the shipped model). limit_instances_to_answer: the model's
            ``SegCompassConfig.limit_instances_to_answer`` (set before the threshold is tuned): keep at most as many
            slots as the answer names objects (shipped model, 200 test samples, generated reasoning: cIoU 0.512 ->
            0.557 with the threshold tuned again, 0.30 -> 0.20). mask_logit_biases: the candidates for the model's
            ``SegCompassConfig.mask_logit_bias`` (a constant added to the mask logits after every head has read
            them, i.e. where a pixel is cut), tuned on validation jointly with the threshold
            (:func:`~segcompass.recipes.tiny.evaluation.tune_mask_bias`; ``(0.0,)`` keeps the decoder's own cut).
            Measured on the shipped stop-28 model (generated reasoning, threshold 0.10): cutting at -0.5 instead of 0
            gave cIoU 0.643 -> 0.647 on the first 1000 validation samples and 0.708 -> 0.714 on the 200 test
            samples (teacher-forced 0.749 -> 0.754 and 0.779 -> 0.782): the masks are slightly too small.
    """

    image_size: int = 96
    num_slots: int = 4
    text_hidden_size: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate_size: int = 384
    vision_hidden_size: int = 96
    vision_depth: int = 2
    backbone_image_side: int = 168
    sam_hidden_size: int = 64
    sam_layers: int = 3
    sam_patch_size: int = 8
    sam_mlp_dim: int = 128
    sae_expansion: int = 8
    hook_layer: int = 2
    codebook_dim: int = 64
    max_concepts: int = 64
    concept_layers: int = 2
    slot_embedding_dropout: float = 0.0
    concept_window: int | None = None
    num_train: int = 16000
    num_validation: int = 1200
    num_test: int = 200
    data_seed: int = 0
    batch_size: int = 16
    lm_warmup_steps: int = 7000
    sae_sequences: int = 768
    sae_epochs: int = 6
    sae_l1_ratio: float = 0.08
    joint_steps: int = 1500
    vision_pretrain_steps: int = 600
    backbone_vision_pretrain_steps: int = 2000
    probe_weight: float = 0.5
    probe_kind_weight: float = 8.0
    probe_pos_weight: float = 8.0
    scene_probe_kind_weight: float = 4.0
    lambda_conf: float = 0.5
    grpo_steps: int = 0
    grpo_learning_rate: float = 5e-5
    grpo_prompts: int = 4
    grpo_num_generations: int = 8
    grpo_temperature: float = 1.3
    grpo_scale_rewards: str = "none"
    grpo_head_lr_multiplier: float = 1.0
    learning_rate: float = 1e-3
    lm_learning_rate: float | None = None
    lm_loss_weight: float = 1.0
    generated_share: float = 0.2
    generated_pool: int = 2048
    misdescription_share: float = 0.0
    concept_steps: int = 4000
    matching_source: str = "heatmap"
    confidence_targets: str = "matched"
    concept_matching_source: str = "mask"
    concept_confidence_targets: str = "mask_iou"
    concept_grouping: str = "answer"
    mask_refiner_hidden_size: int = 32
    refiner_steps: int = 1500
    lambda_mask_bce: float = 0.0
    refiner_lambda_mask_bce: float = 1.0
    lambda_snap: float = 0.0
    refiner_lambda_snap: float = 1.0
    mask_confidence_hidden_size: int = 64
    confidence_epochs: int = 16
    confidence_learning_rate: float = 2e-3
    confidence_stage_targets: str = "mask_iou"
    reasoning_steps: int = 5000
    reasoning_samples: int = 40000
    reasoning_learning_rate: float = 3e-4
    reasoning_anchor_weight: float = 0.0
    reasoning_position_probe_weight: float = 0.0
    reasoning_decision_weight: float = 0.0
    image_position_frequencies: int = 0
    eval_batch_size: int = 32
    max_new_tokens: int = 100
    duplicate_iou: float | None = 0.5
    limit_instances_to_answer: bool = True
    thresholds: tuple[float, ...] = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
    mask_logit_biases: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)

    def __post_init__(self):
        if self.image_size % self.sam_patch_size:
            raise ValueError(
                f"image_size={self.image_size} must be a multiple of sam_patch_size={self.sam_patch_size} "
                "(the SAM grid must be whole); e.g. image_size=96 with sam_patch_size=8."
            )
        check_backbone_image_side(self.backbone_image_side)
        if (self.text_hidden_size // self.text_heads) % 4:
            raise ValueError(
                f"text head dim {self.text_hidden_size // self.text_heads} must be a multiple of 4 for M-RoPE; "
                "change text_hidden_size or text_heads."
            )
        if not 1 <= self.hook_layer <= self.text_layers:
            raise ValueError(f"hook_layer={self.hook_layer} must be in 1..text_layers={self.text_layers}.")
        if self.reasoning_steps > 0 and self.hook_layer == self.text_layers and not self.reasoning_anchor_weight:
            raise ValueError(f"reasoning_steps={self.reasoning_steps} trains the decoder layers above hook_layer="
                             f"{self.hook_layer}, and there is none (text_layers={self.text_layers}); lower hook_layer or "
                             "set reasoning_steps=0.")
        if self.num_slots < 1:
            raise ValueError(f"num_slots={self.num_slots} must be >= 1.")
        for option in ("matching_source", "confidence_targets"):
            for name in (option, f"concept_{option}"):
                check_loss_option(name, getattr(self, name), option)
        if not self.mask_logit_biases or not all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                                 and math.isfinite(b) for b in self.mask_logit_biases):
            raise ValueError(f"mask_logit_biases={self.mask_logit_biases!r} must be one or more finite numbers (the "
                             "candidate SegCompassConfig.mask_logit_bias values; (0.0,) keeps the decoder's cut).")
        if self.reasoning_position_probe_weight > 0 and not self.reasoning_anchor_weight > 0:
            raise ValueError(f"reasoning_position_probe_weight={self.reasoning_position_probe_weight} trains the "
                             "vision tower, which the reasoning stage trains only with reasoning_anchor_weight > 0; "
                             "set both or neither.")
        if (isinstance(self.image_position_frequencies, bool) or not isinstance(self.image_position_frequencies, int)
                or self.image_position_frequencies < 0):
            raise ValueError(f"image_position_frequencies={self.image_position_frequencies!r} must be an int >= 0 "
                             "(0: no image position embedding).")
        if self.confidence_stage_targets not in CONFIDENCE_STAGE_TARGETS:
            raise ValueError(f"confidence_stage_targets={self.confidence_stage_targets!r} must be one of "
                             f"{CONFIDENCE_STAGE_TARGETS} (the confidence stage reads the masks, not a matching).")
        check_duplicate_iou(self.duplicate_iou)
        if not isinstance(self.limit_instances_to_answer, bool):
            raise ValueError(f"limit_instances_to_answer={self.limit_instances_to_answer!r} must be True or False.")
        check_concept_grouping(self.concept_grouping)
        for name in ("lambda_mask_bce", "refiner_lambda_mask_bce", "lambda_snap", "refiner_lambda_snap",
                     "reasoning_anchor_weight", "reasoning_position_probe_weight", "reasoning_decision_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0 (a loss weight; 0 turns it off).")
        if self.confidence_epochs > 0 and not self.mask_confidence_hidden_size:
            raise ValueError(f"confidence_epochs={self.confidence_epochs} trains a mask confidence head, but "
                             "mask_confidence_hidden_size=0 builds none; set mask_confidence_hidden_size (e.g. 64) or "
                             "confidence_epochs=0.")
        if self.refiner_steps > 0 and not self.mask_refiner_hidden_size:
            raise ValueError(f"refiner_steps={self.refiner_steps} trains a mask refiner, but mask_refiner_hidden_size=0 "
                             "builds none; set mask_refiner_hidden_size (e.g. 16) or refiner_steps=0.")
        if self.grpo_num_generations < 2:
            raise ValueError(f"grpo_num_generations={self.grpo_num_generations} must be >= 2 (GRPO compares the "
                             "rollouts of one prompt with each other).")
        for name in ("grpo_temperature", "grpo_learning_rate", "grpo_head_lr_multiplier"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0.")
        if self.grpo_scale_rewards not in GRPO_SCALE_REWARDS:  # TRL itself checks only at the first GRPO step
            raise ValueError(f"grpo_scale_rewards={self.grpo_scale_rewards!r} must be one of {GRPO_SCALE_REWARDS}.")
        if not 0.0 <= self.misdescription_share <= 1.0:
            raise ValueError(f"misdescription_share={self.misdescription_share} must be in [0, 1] (the probability "
                             "that a sample's reference reasoning is fed with one target misdescribed; 0 turns it off).")
        for name in ("num_train", "num_validation", "num_test", "batch_size", "eval_batch_size", "reasoning_samples",
                     "grpo_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")

    @classmethod
    def smoke(cls, **overrides) -> TinyRecipeConfig:
        """Tiny sizes and a handful of steps: exercises every stage in well under 3 minutes on 2 CPU cores."""
        kwargs = dict(
            image_size=64, num_slots=3, text_hidden_size=64, text_layers=2, text_intermediate_size=128,
            vision_hidden_size=32, vision_depth=1, backbone_image_side=56, sam_hidden_size=32, sam_layers=1,
            sam_mlp_dim=64, hook_layer=1, codebook_dim=32, max_concepts=32, num_train=48, num_validation=8,
            num_test=8, batch_size=8, lm_warmup_steps=6, sae_sequences=32, sae_epochs=1, joint_steps=6,
            grpo_steps=2, vision_pretrain_steps=4, backbone_vision_pretrain_steps=4, eval_batch_size=8,
            max_new_tokens=24, thresholds=(0.3, 0.5), concept_layers=1, generated_pool=8, generated_share=0.5,
            concept_steps=4, mask_refiner_hidden_size=4, refiner_steps=2, reasoning_steps=2, reasoning_samples=8,
            mask_confidence_hidden_size=4, confidence_epochs=2,
        )
        kwargs.update(overrides)
        return cls(**kwargs)
