"""Cached hidden states for SAE training: caching from any transformers model, and a shard-wise store.

On-disk layout of a cache directory::

    manifest.json                     # hook_layer, d_in, dtype, rows_done, shards, complete
    shard_00000.safetensors           # activations (n_tokens, d_in), lengths (n_sequences,)
    shard_00001.safetensors
    ...

Only valid tokens (attention mask 1) are stored, so padding never reaches the SAE (the authors' cache stored the
padded 1 400 positions of every sample). Caching is resumable: the manifest is rewritten after every shard, and
a restart skips the dataset rows already covered by finished shards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..utils.io import write_json_atomic
from ..utils.logging import get_logger

logger = get_logger(__name__)

MANIFEST = "manifest.json"


# ----------------------------------------------------------------------------------------------- store
class ActivationStore:
    """Token activations grouped into sequences and shards, read one shard at a time.

    Each shard is a pair ``activations`` (n_tokens, d_in) + ``lengths`` (n_sequences,) with
    ``lengths.sum() == n_tokens``. A sequence is the unit of batching (``batch_size`` sequences per step, as in
    the paper's appendix A.2) and of the train / held-out split.
    """

    def __init__(self, shards: list, d_in: int):
        if not shards:
            raise ValueError("ActivationStore needs at least one shard; the activation cache is empty.")
        self.shards = shards
        self.d_in = d_in

    @classmethod
    def from_tensor(cls, activations: torch.Tensor, lengths: torch.Tensor | None = None) -> ActivationStore:
        """Wrap in-memory activations (N, d_in); without ``lengths`` each token is its own sequence."""
        if activations.dim() != 2:
            raise ValueError(f"`activations` must have shape (num_tokens, d_in), got {tuple(activations.shape)}.")
        if lengths is None:
            lengths = torch.ones(activations.shape[0], dtype=torch.long)
        if int(lengths.sum()) != activations.shape[0]:
            raise ValueError(
                f"`lengths` sums to {int(lengths.sum())} but there are {activations.shape[0]} activation rows."
            )
        return cls([(activations, lengths)], activations.shape[1])

    @classmethod
    def from_cache(cls, directory) -> ActivationStore:
        """Open a cache directory written by [`cache_activations`]."""
        manifest = read_manifest(directory)
        if manifest is None:
            raise ValueError(f"{directory} has no {MANIFEST}; create it with `cache_activations` (segcompass train-sae).")
        if not manifest.get("complete", False):
            logger.warning("Activation cache %s is incomplete (%d rows done); training on what is there.",
                           directory, manifest.get("rows_done", 0))
        return cls([Path(directory) / name for name in manifest["shards"]], int(manifest["d_in"]))

    def load_shard(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        shard = self.shards[index]
        if isinstance(shard, tuple):
            return shard
        tensors = load_file(str(shard))
        return tensors["activations"], tensors["lengths"]

    @staticmethod
    def _eval_sequences(num_sequences: int, shard_index: int, eval_fraction: float, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + shard_index)
        return torch.rand(num_sequences, generator=generator) < eval_fraction  # (S,)

    def iter_batches(
        self,
        batch_size: int,
        *,
        split: str = "train",
        eval_fraction: float = 0.05,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = True,
    ) -> Iterator[torch.Tensor]:
        """Yield float32 token batches (n_tokens, d_in) of ``batch_size`` sequences each (the last may be short).

        ``split`` is ``"train"`` or ``"eval"``; the split is fixed by ``seed`` (not by ``epoch``), the order by
        ``seed`` and ``epoch``.
        """
        if split not in ("train", "eval"):
            raise ValueError(f"`split` must be 'train' or 'eval', got {split!r}.")
        order_gen = torch.Generator().manual_seed(seed * 7919 + epoch)
        shard_order = torch.randperm(len(self.shards), generator=order_gen) if shuffle else range(len(self.shards))
        pending: list[torch.Tensor] = []
        for shard_index in map(int, shard_order):
            acts, lengths = self.load_shard(shard_index)
            sequences = list(torch.split(acts, lengths.tolist()))
            held_out = self._eval_sequences(len(sequences), shard_index, eval_fraction, seed)
            keep = held_out if split == "eval" else ~held_out
            chosen = [seq for seq, k in zip(sequences, keep.tolist()) if k]
            if shuffle:
                chosen = [chosen[i] for i in torch.randperm(len(chosen), generator=order_gen).tolist()]
            for seq in chosen:
                pending.append(seq)
                if len(pending) == batch_size:
                    yield torch.cat(pending).float()
                    pending = []
        if pending:
            yield torch.cat(pending).float()

    def num_sequences(self, *, split: str = "train", eval_fraction: float = 0.05, seed: int = 0) -> int:
        total = 0
        for shard_index in range(len(self.shards)):
            _, lengths = self.load_shard(shard_index)
            held_out = self._eval_sequences(lengths.numel(), shard_index, eval_fraction, seed)
            total += int(held_out.sum()) if split == "eval" else int((~held_out).sum())
        return total


# ----------------------------------------------------------------------------------------------- caching
def read_manifest(directory) -> dict | None:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is corrupt ({err}); delete the cache directory and cache again.") from err


def _default_format(processor, text: str, has_image: bool) -> str:
    """The text to encode for one sample: the chat template with an image slot when images are used."""
    if has_image:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    return text


@torch.no_grad()
def cache_activations(
    model,
    processor,
    dataset,
    output_dir,
    *,
    hook_layer: int,
    text_column: str = "text",
    image_column: str | None = None,
    batch_size: int = 8,
    max_length: int = 512,
    sequences_per_shard: int = 1024,
    dtype: torch.dtype = torch.float16,
    format_fn: Callable | None = None,
    resume: bool = True,
) -> Path:
    """Cache ``hidden_states[hook_layer]`` of ``model`` over a ``datasets.Dataset`` (text, or image + text).

    Args:
        model: any transformers model that accepts ``output_hidden_states=True`` (causal LM or image-text model).
        processor: its tokenizer (text) or processor (image + text).
        dataset: rows with ``text_column`` (and ``image_column`` for images).
        output_dir: cache directory (see the module docstring for the layout).
        hook_layer: index into ``hidden_states`` (0 = embedding output).
        format_fn: ``(processor, text, has_image) -> str``; defaults to the processor's chat template with an
            image slot when images are used, the raw text otherwise.
        resume: continue a cache in ``output_dir`` instead of refusing to touch it.

    Returns:
        The cache directory, readable with ``ActivationStore.from_cache``.
    """
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    for column in [text_column] + ([image_column] if image_column else []):
        if column not in dataset.column_names:
            raise ValueError(f"Column {column!r} not in the dataset (columns: {dataset.column_names}).")
    num_layers = getattr(model.config.get_text_config(), "num_hidden_layers", None)
    if num_layers is not None and not 0 <= hook_layer <= num_layers:
        raise ValueError(
            f"`hook_layer`={hook_layer} is out of range: hidden_states has indices 0..{num_layers} for this model "
            "(0 = embedding output)."
        )
    manifest = read_manifest(output)
    if manifest is not None:
        if not resume:
            raise ValueError(f"{output} already holds an activation cache; pass resume=True or choose a new directory.")
        if manifest["hook_layer"] != hook_layer:
            raise ValueError(
                f"{output} caches hook_layer={manifest['hook_layer']}, not {hook_layer}; use another directory."
            )
    else:
        manifest = {"hook_layer": hook_layer, "d_in": None, "dtype": str(dtype).replace("torch.", ""),
                    "rows_done": 0, "shards": [], "complete": False, "num_rows": len(dataset)}
    format_fn = format_fn or _default_format
    tokenizer = getattr(processor, "tokenizer", processor)
    model.eval()
    device = next(model.parameters()).device
    buffer_acts: list[torch.Tensor] = []
    buffer_lengths: list[int] = []
    rows_in_buffer = 0

    def flush() -> None:
        nonlocal buffer_acts, buffer_lengths, rows_in_buffer
        if not buffer_lengths:
            return
        name = f"shard_{len(manifest['shards']):05d}.safetensors"
        tmp = output / (name + ".tmp")
        save_file({"activations": torch.cat(buffer_acts).to(dtype).contiguous(),
                   "lengths": torch.tensor(buffer_lengths, dtype=torch.long)}, str(tmp))
        os.replace(tmp, output / name)
        manifest["shards"].append(name)
        manifest["rows_done"] += rows_in_buffer
        write_json_atomic(output / MANIFEST, manifest)
        buffer_acts, buffer_lengths, rows_in_buffer = [], [], 0

    start = manifest["rows_done"]
    progress = tqdm(total=len(dataset), initial=start, desc="Caching activations", unit="row")
    for batch_start in range(start, len(dataset), batch_size):
        rows = dataset[batch_start : batch_start + batch_size]
        texts = [format_fn(processor, t, image_column is not None) for t in rows[text_column]]
        kwargs = dict(text=texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
        if image_column is not None:
            kwargs["images"] = [img.convert("RGB") for img in rows[image_column]]
            inputs = processor(**kwargs)
        else:
            inputs = tokenizer(**kwargs)
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        outputs = model(**inputs, output_hidden_states=True)
        hidden = outputs.hidden_states[hook_layer]  # (b, T, d_in)
        mask = inputs["attention_mask"].bool()  # (b, T)
        if manifest["d_in"] is None:
            manifest["d_in"] = hidden.shape[-1]
        for i in range(hidden.shape[0]):
            buffer_acts.append(hidden[i][mask[i]].cpu())  # (t_i, d_in)
            buffer_lengths.append(int(mask[i].sum()))
        rows_in_buffer += hidden.shape[0]
        progress.update(hidden.shape[0])
        if len(buffer_lengths) >= sequences_per_shard:
            flush()
    flush()
    progress.close()
    manifest["complete"] = True
    write_json_atomic(output / MANIFEST, manifest)
    logger.info("Cached %d rows of hidden_states[%d] into %s (%d shards).", manifest["rows_done"], hook_layer,
                output, len(manifest["shards"]))
    return output
