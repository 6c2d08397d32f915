"""Contract with TRL: SegCompassGRPOTrainer overrides private GRPOTrainer / Trainer methods and reads private
attributes. These tests fail loudly when a TRL (or transformers) release changes them, instead of training silently
wrong. Update the pinned range and segcompass/training/grpo_trainer.py (+ grpo_optim.py) together."""

from __future__ import annotations

import inspect

import pytest

trl = pytest.importorskip("trl")

from packaging.version import Version  # noqa: E402
from trl import GRPOTrainer  # noqa: E402

PINNED = (Version("1.16"), Version("1.17"))


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_trl_version_is_within_the_pinned_range():
    version = Version(trl.__version__)
    assert PINNED[0] <= version < PINNED[1], (
        f"trl {version} is outside the range SegCompassGRPOTrainer was written for (>={PINNED[0]},<{PINNED[1]}); "
        "re-check the overridden methods in segcompass/training/grpo_trainer.py and grpo_optim.py"
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("_generate", ["self", "prompts"]),
        ("_generate_and_score_completions", ["self", "inputs"]),
        ("_compute_loss", ["self", "model", "inputs"]),
        ("_tokenize_prompts", ["self", "prompts"]),
        ("create_optimizer", ["self", "model"]),
        ("create_scheduler", ["self", "num_training_steps", "optimizer"]),
        ("_clip_grad_norm", ["self", "model"]),
        ("_get_grad_norm", ["self", "model", "grad_norm"]),
        ("_save", ["self", "output_dir", "state_dict"]),
    ],
)
def test_overridden_methods_keep_their_signatures(name, expected):
    method = getattr(GRPOTrainer, name, None)
    assert method is not None, f"GRPOTrainer.{name} no longer exists; SegCompassGRPOTrainer overrides it"
    assert _params(method) == expected, f"GRPOTrainer.{name} signature changed: {inspect.signature(method)}"


def test_logps_helper_keeps_its_leading_arguments_and_image_keywords():
    params = _params(GRPOTrainer._get_per_token_logps_and_entropies)
    assert params[:5] == ["self", "model", "input_ids", "attention_mask", "logits_to_keep"], params
    for keyword in ("pixel_values", "image_grid_thw", "mm_token_type_ids", "num_images"):
        assert keyword in params, keyword
    assert not any(p.kind is p.VAR_KEYWORD for p in
                   inspect.signature(GRPOTrainer._get_per_token_logps_and_entropies).parameters.values()), (
        "TRL now accepts **kwargs here; the SAM keys may no longer need dropping"
    )


def test_generate_returns_the_eight_tuple_we_unpack():
    source = inspect.getsource(GRPOTrainer._generate)
    returned = "return prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images, tool_images"
    assert returned in source
    assert "self._tokenize_prompts(prompts)" in source
    caller = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    assert "= self._generate(prompts)" in caller
    assert "self._calculate_rewards(" in caller and "extra_fields" in caller  # masks reach the rewards this way
    assert "self._get_per_token_logps_and_entropies(" in caller and "**forward_kwargs" in caller


def test_private_attributes_we_read_are_still_set():
    init = inspect.getsource(GRPOTrainer.__init__)
    for attribute in ("self.eos_token_ids", "self._tokenizer", "self.temperature", "self.chat_template_kwargs",
                      "self._metrics", "self.ref_model", "self.beta", "self.tools", "self.environment_factories",
                      "self.rollout_func"):
        assert f"{attribute} =" in init, attribute
    # The reference model is built from `config._name_or_path` when beta != 0 (we build it ourselves instead).
    assert "create_model_from_path(get_config_model_id(self.model.config)" in init
    assert "add_fused_lm_head(" in init
    loss = inspect.getsource(GRPOTrainer._compute_loss)
    assert "self.beta" in loss and "return loss" in loss


def test_trl_helpers_we_import_exist():
    from trl.data_utils import apply_chat_template, is_conversational, prepare_multimodal_messages
    from trl.trainer.callbacks import SyncRefModelCallback
    from trl.trainer.utils import add_fused_lm_head, disable_dropout_in_model

    assert _params(add_fused_lm_head)[0] == "model" and "temperature" in _params(add_fused_lm_head)
    for fn in (apply_chat_template, is_conversational, prepare_multimodal_messages, disable_dropout_in_model):
        assert callable(fn)
    assert "ref_model" in _params(SyncRefModelCallback.__init__)


def test_trainer_loop_calls_the_gradient_hooks_we_override():
    """Head gradients are averaged (multi-process) in _clip_grad_norm/_get_grad_norm and zeroed by a callback at
    on_step_end, because the Trainer only zeroes its own model (the backbone)."""
    from transformers import Trainer

    loop = inspect.getsource(Trainer._run_epoch)
    assert "self._get_grad_norm(model" in loop and "self._clip_grad_norm(model)" in loop
    assert "model.zero_grad()" in loop and "on_step_end" in loop
    assert loop.index("model.zero_grad()") < loop.index("on_step_end")
    assert "self.create_optimizer()" in inspect.getsource(Trainer._prepare_for_training)


def test_the_loss_computes_policy_log_probs_once_through_the_helper_we_share():
    """The shared forward (segcompass/training/grpo_loss.py) answers TRL's one `_get_per_token_logps_and_entropies`
    call in `_compute_loss` with the full batch, through the fused LM head (`labels=`, `fused_lm_head=True`,
    `.log_probs` / `.entropy` of the shifted positions), and stops generation with `self.eos_token_ids` /
    `self.generation_config` / `self.generation_kwargs`."""
    loss = inspect.getsource(GRPOTrainer._compute_loss)
    assert loss.count("self._get_per_token_logps_and_entropies(") == 1
    assert "input_ids = torch.cat([prompt_ids, completion_ids], dim=1)" in loss
    assert "logits_to_keep = completion_ids.size(1)" in loss and "batch_size=" not in loss.split("compute_entropy")[0]
    helper = inspect.getsource(GRPOTrainer._get_per_token_logps_and_entropies)
    assert "fused_lm_head=True" in helper and "outputs.log_probs[:, -logits_to_keep:]" in helper
    from trl.trainer import utils

    fused = inspect.getsource(utils.add_fused_lm_head)
    assert "hidden_states = backbone_outputs.last_hidden_state[:, :-1]" in fused and "labels = labels[:, 1:]" in fused
    assert 'getattr(self, backbone_attr)(*args, **kwargs)' in fused  # output_hidden_states reaches the base model
    init = inspect.getsource(GRPOTrainer.__init__)
    assert '"eos_token_id": self.eos_token_ids' in init and "self.generation_config = GenerationConfig(" in init
    assert "completion_mask = (sequence_indices <= eos_idx.unsqueeze(1)).int()" in inspect.getsource(GRPOTrainer)
