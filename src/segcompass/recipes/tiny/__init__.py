"""The tiny recipe (``segcompass train-tiny``): a small SegCompass trained end to end on the synthetic reasoning-segmentation domain.

One call builds everything from scratch with the project's own pieces and writes a loadable checkpoint:

1. a word-level tokenizer over the synthetic :data:`~segcompass.data.synthetic.VOCABULARY` + the prompt template
   words + Qwen2.5-VL vision specials, with ``<think>`` / ``</think>`` as added tokens and ``<REF_POS>`` + K slot
   tokens as special tokens;
2. a tiny Qwen2.5-VL-architecture backbone and a tiny SAM-architecture image encoder / mask decoder; the SAM
   encoder is pretrained first on dense colour / kind / size classification of every pixel from its image
   embedding (an auxiliary probe that is never saved), so the from-scratch image keys encode shape attributes;
   The backbone's ViT is likewise pretrained on a multi-label probe of its merged image tokens (what is visible in
   each token's cell), so that the image tokens the LM reads carry the scene;
3. **LM warm-up**: supervised next-token loss on the reference completion ``<think>{reasoning}</think><REF_POS>``
   given the prompt and image (labels on completion tokens only);
4. **SAE pretraining** on the backbone's ``hidden_states[L]`` (ReLU + L1, :class:`~segcompass.sae.SAETrainer`),
   reporting held-out FVE / L0; the SAE is then frozen inside the model;
5. **joint training** of the mask path (Hungarian-matched segmentation + confidence losses of
   :func:`~segcompass.training.losses.segmentation_losses`) with teacher-forced reference completions + slot tokens,
   plus the LM loss so the reasoning is kept; then, when ``segcompass.training.grpo_trainer`` provides a working
   ``SegCompassGRPOTrainer``, a short GRPO stage (skipped with a logged note otherwise);
6. **evaluation** with *generated* (greedy) reasoning on the synthetic test split, the confidence threshold tuned
   on the validation split: cIoU / gIoU / N-acc / T-acc overall and per task family, teacher-forced numbers,
   reasoning accuracy, and two ablations (concept path zeroed; SAE replaced by a fresh random one);
7. ``save_pretrained`` of model + processor, ``metrics.json`` and a model card ``README.md``.

Dimension glossary: B batch, T tokens, K slots, m mask grid side (``4 * sam_image_size / sam_patch_size``),
S synthetic image side, D text hidden size.

Modules: :mod:`.config` (settings), :mod:`.build` (random model + processor), :mod:`.data` (samples, vision probes,
batching), :mod:`.distributed` (data-parallel helpers), :mod:`.stages` (training stages), :mod:`.evaluation`
(scoring, threshold tuning, the evaluation runner), :mod:`.card` (model card from ``model_card.md``), :mod:`.main`
(``train_tiny``, ``reevaluate``; the command is :mod:`segcompass.commands.train_tiny`).
"""

from .build import build_tiny_model_and_processor, build_tiny_tokenizer
from .config import DEFAULT_MODEL_DIR, TinyRecipeConfig
from .evaluation import evaluate_tiny
from .main import train_tiny

__all__ = [
    "DEFAULT_MODEL_DIR",
    "TinyRecipeConfig",
    "build_tiny_model_and_processor",
    "build_tiny_tokenizer",
    "evaluate_tiny",
    "train_tiny",
]
