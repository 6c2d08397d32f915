"""Read and write the SAELens on-disk layout: ``cfg.json`` + ``sae_weights.safetensors``.

Tensors: ``W_enc`` (d_in, d_sae), ``b_enc`` (d_sae), ``W_dec`` (d_sae, d_in), ``b_dec`` (d_in) and, for
JumpReLU, ``threshold`` (d_sae) (``log_threshold`` is accepted and exponentiated). Both the SAELens ≥ 6 config
(``architecture`` = standard / topk / jumprelu, ``k``, ``metadata``) and the older one (``activation_fn_str``,
``activation_fn_kwargs``, top-level ``hook_layer``) are read; the ≥ 6 form is written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..utils.io import atomic_path, write_text_atomic
from ..utils.logging import get_logger
from .configuration_sae import SparseAutoencoderConfig

logger = get_logger(__name__)

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae_weights.safetensors"
_TL_RESID_POST = re.compile(r"blocks\.(\d+)\.hook_resid_post$")


def _activation_from_cfg(cfg: dict) -> tuple[str, int | None]:
    architecture = cfg.get("architecture", "standard")
    if architecture == "jumprelu":
        return "jumprelu", None
    if architecture == "topk":
        return "topk", cfg.get("k")
    if architecture != "standard":
        raise ValueError(
            f"SAELens architecture {architecture!r} is not supported; SegCompass reads 'standard', 'topk' and "
            "'jumprelu' SAEs."
        )
    fn = cfg.get("activation_fn_str", cfg.get("activation_fn", "relu"))
    if fn == "relu":
        return "relu", None
    if fn == "topk":
        return "topk", (cfg.get("activation_fn_kwargs") or {}).get("k")
    raise ValueError(f"SAELens activation {fn!r} is not supported; use 'relu' or 'topk'.")


def _hook_layer_from_cfg(cfg: dict) -> int:
    metadata = cfg.get("metadata") or {}
    for source in (cfg, metadata):
        if isinstance(source.get("hook_layer"), int):
            return source["hook_layer"]
    hook_name = metadata.get("hook_name", cfg.get("hook_name", ""))
    match = _TL_RESID_POST.search(hook_name or "")
    if match:
        # TransformerLens: blocks.N.hook_resid_post is the output of block N (0-based) = hidden_states[N + 1].
        logger.info("Derived hook_layer=%d from hook_name %r.", int(match.group(1)) + 1, hook_name)
        return int(match.group(1)) + 1
    logger.warning("SAELens cfg has no hook_layer; using 0. Pass hook_layer=... to from_saelens to set it.")
    return 0


def load_saelens(model_cls, path, **config_overrides):
    """Build ``model_cls`` (a [`SparseAutoencoder`]) from a SAELens directory; see the module docstring."""
    directory = Path(path)
    cfg_path, weights_path = directory / CFG_NAME, directory / WEIGHTS_NAME
    for required in (cfg_path, weights_path):
        if not required.is_file():
            raise ValueError(
                f"{required} not found: a SAELens SAE directory holds {CFG_NAME} and {WEIGHTS_NAME}. "
                "Point `from_saelens` at that directory."
            )
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_path} is not valid JSON ({err}); re-download or re-save the SAE.") from err
    normalization = cfg.get("normalize_activations", "none")
    if normalization not in (None, "none"):
        raise ValueError(
            f"{cfg_path}: normalize_activations={normalization!r} is not supported; fold the scaling into the "
            "weights with SAELens (`fold_activation_norm_scaling_factor`) and save again."
        )
    activation, k = _activation_from_cfg(cfg)
    kwargs = dict(
        d_in=int(cfg["d_in"]),
        d_sae=int(cfg["d_sae"]),
        activation=activation,
        k=k,
        hook_layer=_hook_layer_from_cfg(cfg),
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", False)),
        backbone_name_or_path=(cfg.get("metadata") or {}).get("model_name", cfg.get("model_name")),
    )
    kwargs.update(config_overrides)
    config = SparseAutoencoderConfig(**kwargs)

    tensors = load_file(str(weights_path))
    if activation == "jumprelu" and "threshold" not in tensors and "log_threshold" in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    d_in, d_sae = config.d_in, config.d_sae
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if activation == "jumprelu":
        expected["threshold"] = (d_sae,)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ValueError(
            f"{weights_path} is missing tensors {missing} (found {sorted(tensors)}); a {activation} SAE needs "
            f"{sorted(expected)}."
        )
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(
                f"{weights_path}: tensor {name} has shape {tuple(tensors[name].shape)} but cfg.json (d_in={d_in}, "
                f"d_sae={d_sae}) implies {shape}. The cfg and weights belong to different SAEs."
            )
    model = model_cls(config)
    state = {name: tensors[name].to(torch.float32) for name in expected}
    model.load_state_dict(state, strict=True)
    return model


def save_saelens(model, path, hook_name: str | None = None) -> None:
    """Write ``model`` in the SAELens ≥ 6 layout into directory ``path``."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config
    architecture = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}[config.activation]
    cfg = {
        "architecture": architecture,
        "d_in": config.d_in,
        "d_sae": config.d_sae,
        "dtype": str(model.W_enc.dtype).replace("torch.", ""),
        "device": "cpu",
        "apply_b_dec_to_input": config.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "hook_name": hook_name or f"hidden_states.{config.hook_layer}",
            "hook_layer": config.hook_layer,
            "model_name": config.backbone_name_or_path,
        },
    }
    if config.activation == "topk":
        cfg["k"] = config.k
    tensors = {name: getattr(model, name).detach().cpu().contiguous() for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if config.activation == "jumprelu":
        tensors["threshold"] = model.threshold.detach().cpu().contiguous()
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp))
    write_text_atomic(directory / CFG_NAME, json.dumps(cfg, indent=2))
