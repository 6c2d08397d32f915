"""Build a :class:`~segcompass.sae.feature_dictionary.FeatureDictionary`: run the model over a dataset and describe
every SAE feature by the instruction / reasoning words and the image cells it fires on.

Each row (the loaders' schema: ``image``, ``instruction``, ``masks``, optional ``reasoning``) is teacher-forced on
``<think>{reasoning}</think><REF_POS>`` (the prompt alone when it has no reasoning) plus the slot tokens, as the
model scores it. The SAE input comes from ``model.get_hook_states`` and is encoded sparsely
(``model.sae.encode_sparse``); per feature the builder accumulates how often it fires, its mean activation, the text
tokens it fires on (the instruction and the reasoning; prompt-template tokens, special tokens and padding are left
out, :func:`~segcompass.interpret.tokens.token_types`) and its strongest image tokens, with a crop of each one's
cell of the image (:func:`~segcompass.interpret.tokens.patch_index_map`).

The label rule (:data:`LABEL_RULE`, :func:`label_feature`):

1. a feature that never fired has no label (``None``);
2. its *words* are the instruction / reasoning tokens it fired on, lower-cased, without punctuation and
   :data:`STOP_WORDS`. When it fired on at least as large a share of the word tokens as of the image tokens (rates,
   not counts: a larger image has more image tokens, and counts would then move every label to the image), the
   label is the most frequent word, or ``"<first> / <runner-up>"`` when the runner-up fired at least half as often
   (``"purple"``, ``"left / right"``);
3. else, when it fired on image tokens, ``"image: <colour>"``: the dominant colour of its top image cells
   (:func:`colour_name`);
4. else ``"(unlabelled)"`` (it fires only on the prompt template or on special tokens).

Only the Qwen2.5-VL backbone is supported (the image-token geometry of :mod:`~segcompass.interpret.tokens`).

Dimension glossary: ``B`` rows per batch, ``T`` tokens, ``D`` hidden size, ``d_sae`` features, ``V`` vocabulary,
``nnz`` active (token, feature) pairs, ``k`` top cells per feature, ``(g_h, g_w)`` image-token grid, ``(H, W)``
image size, ``c`` crop side.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..answer_format import INSTRUCTION_FIELD, reference_completion
from ..image_utils import load_image
from ..sae.feature_dictionary import FeatureDictionary, FeatureEntry
from ..utils.logging import get_logger
from ._common import EvalMode
from .tokens import _sequence_text, check_qwen, image_token_grid, patch_index_map, token_types

logger = get_logger(__name__)

__all__ = ["LABEL_RULE", "STOP_WORDS", "UNLABELLED", "build_feature_dictionary", "colour_name", "label_feature",
           "label_word"]

UNLABELLED = "(unlabelled)"
LABEL_RULE = ("most frequent instruction/reasoning word it fires on (stop-words and punctuation dropped; 'a / b' "
              "with the runner-up when that fires at least half as often), if it fires on at least as large a share "
              "of the word tokens as of the image tokens; else 'image: <dominant colour of its top image cells>'; "
              "else '(unlabelled)'")
STOP_WORDS = frozenset({
    "a", "an", "the", "of", "to", "in", "on", "at", "by", "for", "from", "with", "as", "and", "or", "but", "is", "are",
    "was", "were", "be", "been", "it", "its", "this", "that", "these", "those", "there", "here", "which", "who",
    "what", "whose", "so", "than", "then", "into", "onto", "over", "under", "out", "up", "i", "you", "we", "they",
    "he", "she", "me", "us", "them", "my", "your", "our", "their", "do", "does", "did", "has", "have", "had", "will",
    "would", "can", "could", "should", "may", "might", "must", "also", "just",
})
_CODES = {"question": 1, "cot": 2, "instance": 3, "background": 3}  # 0: template / special / padding
_INSTRUCTION, _REASONING, _IMAGE = 1, 2, 3
# hue bins (degrees, upper bound exclusive) of colour_name; red wraps around 360
_HUES = ((15, "red"), (45, "orange"), (70, "yellow"), (170, "green"), (260, "blue"), (330, "purple"), (361, "red"))


# ---------------------------------------------------------------------------------------------------- the label
def colour_name(pixels) -> str:
    """The dominant colour of ``pixels`` (``(..., 3)`` uint8 RGB): the most common hue bin (red, orange, yellow,
    green, blue, purple) of the chromatic pixels (saturation >= 0.35, value >= 0.25) when they are at least 15 % of
    the pixels, else ``"black"`` / ``"grey"`` / ``"white"`` by mean brightness (< 0.25, < 0.92, >= 0.92)."""
    rgb = np.asarray(pixels, dtype=np.float64).reshape(-1, 3) / 255.0  # (N, 3)
    if rgb.size == 0:
        raise ValueError("colour_name needs at least one pixel; got an empty array.")
    high, low = rgb.max(1), rgb.min(1)
    chroma = high - low
    chromatic = (chroma >= 0.35 * np.maximum(high, 1e-8)) & (high >= 0.25)
    if chromatic.mean() < 0.15:
        brightness = high.mean()
        return "black" if brightness < 0.25 else "grey" if brightness < 0.92 else "white"
    r, g, b = rgb[chromatic].T
    c = chroma[chromatic]
    top = high[chromatic]
    hue = np.where(top == r, ((g - b) / c) % 6, np.where(top == g, (b - r) / c + 2, (r - g) / c + 4)) * 60.0
    names = [next(name for bound, name in _HUES if h < bound) for h in hue]
    return Counter(names).most_common(1)[0][0]


def label_word(token: str) -> str | None:
    """The word a decoded text token counts as for the label (lower-cased), or None for punctuation, stop-words and
    empty tokens."""
    word = token.strip().lower()
    return word if word and word not in STOP_WORDS and any(ch.isalnum() for ch in word) else None


def label_feature(word_counts: Counter, image_fires: int, cell_pixels=None, fired: bool = True, *,
                  word_tokens: int | None = None, image_tokens: int | None = None) -> str | None:
    """The label rule of the module docstring.

    Args:
        word_counts: how often the feature fired on each instruction / reasoning token (decoded text; stop-words and
            punctuation are dropped here).
        image_fires: how often it fired on image tokens.
        cell_pixels: ``(..., 3)`` uint8 pixels of its top image cells (for the colour), or None.
        fired: whether it fired at all.
        word_tokens, image_tokens: how many word tokens (:func:`label_word` not None) and image tokens were seen,
            fired or not. With both, words win when their firing rate is at least the image tokens' rate; without
            them (or with a zero), when the counts are (the two agree when both kinds are equally many).
    """
    if not fired:
        return None
    words = Counter()
    for token, count in word_counts.items():
        word = label_word(token)
        if word is not None:
            words[word] += count
    ranked = sorted(words.items(), key=lambda item: (-item[1], item[0]))  # ties: alphabetical, deterministic
    on_words, on_image = sum(words.values()), image_fires
    if word_tokens and image_tokens:  # rates: fires per word token against fires per image token
        on_words, on_image = on_words * image_tokens, on_image * word_tokens
    if ranked and on_words >= on_image:
        (first, top), *rest = ranked
        return f"{first} / {rest[0][0]}" if rest and 2 * rest[0][1] >= top else first
    if image_fires > 0 and cell_pixels is not None and np.asarray(cell_pixels).size:
        return f"image: {colour_name(cell_pixels)}"
    return UNLABELLED


# ---------------------------------------------------------------------------------------------------- accumulation
class _TopCells:
    """Per feature, the ``k`` image tokens with the largest activation seen so far (earlier ones win ties)."""

    def __init__(self, d_sae: int, k: int):
        self.values = torch.full((d_sae, k), float("-inf"))  # (d_sae, k)
        self.sample = torch.full((d_sae, k), -1, dtype=torch.long)  # (d_sae, k) row index in the dataset
        self.cell = torch.full((d_sae, k), -1, dtype=torch.long)  # (d_sae, k) row-major grid index

    def update(self, feature, value, sample, cell) -> None:
        """Merge candidates ``(nnz,)`` each (feature, activation, dataset row, grid cell)."""
        d_sae, k = self.values.shape
        owners = torch.arange(d_sae).repeat_interleave(k)  # (d_sae * k,)
        f = torch.cat([owners, feature])
        v = torch.cat([self.values.flatten(), value])
        s = torch.cat([self.sample.flatten(), sample])
        c = torch.cat([self.cell.flatten(), cell])
        order = torch.argsort(v, descending=True, stable=True)
        order = order[torch.argsort(f[order], stable=True)]  # grouped by feature, strongest first
        f, v, s, c = f[order], v[order], s[order], c[order]
        sizes = torch.bincount(f, minlength=d_sae)
        rank = torch.arange(f.numel()) - (sizes.cumsum(0) - sizes)[f]
        keep = rank < k
        self.values[f[keep], rank[keep]] = v[keep]
        self.sample[f[keep], rank[keep]] = s[keep]
        self.cell[f[keep], rank[keep]] = c[keep]


def _instruction_tokens(processor, instruction: str, completion: str, num_image: int) -> np.ndarray:
    """``(t,)`` bool over one row's non-padding tokens: whose characters overlap the instruction itself (not the
    prompt template around it). Re-derives the row's text and offsets as :func:`token_types` does."""
    text, question, _ = _sequence_text(processor, instruction, completion, True, num_image)
    start = question[0] + processor.prompt_template.index(INSTRUCTION_FIELD)
    end = start + len(instruction.strip())
    tokenizer = processor.tokenizer
    bos = getattr(tokenizer, "bos_token", None)
    encoded = tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)), return_offsets_mapping=True)
    offsets = np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)  # (t, 2)
    return (offsets[:, 0] < end) & (offsets[:, 1] > start)


def _completion(row, processor, index: int) -> str:
    reasoning = (row.get("reasoning") or "").strip()
    if not reasoning:
        return ""  # the prompt alone (plus <REF_POS> and the slots, as the model scores it)
    return reference_completion(reasoning, processor.ref_token, sample_id=f"{index} ({row.get('sample_id', '?')})")


def _batch(model, processor, rows, first: int):
    """Processor inputs of ``rows`` (on the model's device) and each token's kind ``(B, T)``: 0 template / special /
    padding, 1 instruction, 2 reasoning, 3 image; each image token's grid cell ``(B, T)`` (-1 elsewhere); the rows'
    ``(g_h, g_w)`` grids."""
    for i, row in enumerate(rows):
        if "image" not in row or "instruction" not in row:
            raise ValueError(f"Row {first + i} has no 'image' / 'instruction'; pass rows of the SegCompass dataset "
                             "schema (segcompass.data.schema).")
    images = [load_image(row["image"]) for row in rows]
    instructions = [row["instruction"] for row in rows]
    completions = [_completion(row, processor, first + i) for i, row in enumerate(rows)]
    batch = processor(images, instructions, completions=completions, append_slots=True)
    masks = [np.zeros((image.height, image.width), dtype=bool) for image in images]
    types = token_types(batch["input_ids"], processor, instructions, completions, image_grid_thw=batch["image_grid_thw"],
                        masks=masks, attention_mask=batch["attention_mask"])  # (B, T)
    kinds = np.vectorize(lambda name: _CODES.get(name, 0), otypes=[np.int64])(types)  # (B, T)
    cells = np.full(kinds.shape, -1, dtype=np.int64)  # (B, T)
    merge = int(getattr(processor.image_processor, "merge_size", 2))
    grids = []
    for b in range(len(rows)):
        positions = batch["attention_mask"][b].bool().nonzero().flatten().numpy()
        grid = image_token_grid(batch["image_grid_thw"][b], merge)
        grids.append(grid)
        inside = _instruction_tokens(processor, instructions[b], completions[b], grid[0] * grid[1])  # (t,)
        question = kinds[b, positions] == _INSTRUCTION
        kinds[b, positions[question & ~inside]] = 0  # template text around the instruction
        image_positions = positions[kinds[b, positions] == _IMAGE]
        cells[b, image_positions] = np.arange(len(image_positions))
    inputs = {}
    for name in processor.backbone_processor.model_input_names:
        value = batch.get(name)
        if isinstance(value, torch.Tensor):
            value = value.to(model.device)
            inputs[name] = value.to(model.dtype) if value.is_floating_point() else value
    return inputs, torch.from_numpy(kinds), torch.from_numpy(cells), grids


def _crop(image: Image.Image, grid: tuple[int, int], cell: int, size: int) -> np.ndarray:
    """``(c, c, 3)`` uint8: the pixels of image token ``cell``'s cell (:func:`patch_index_map`), resized."""
    owner = patch_index_map(image.height, image.width, grid) == cell  # (H, W)
    ys, xs = np.nonzero(owner)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return np.asarray(image.convert("RGB").crop(box).resize((size, size), Image.Resampling.BILINEAR))


def _model_name(model) -> str | None:
    name = getattr(model, "name_or_path", None) or None
    return Path(name).name if name and Path(name).is_dir() else name


# ---------------------------------------------------------------------------------------------------- the builder
@torch.no_grad()
def build_feature_dictionary(model, processor, dataset, *, num_samples: int | None = None, top_tokens: int = 5,
                             top_cells: int = 4, batch_size: int = 8, crop_size: int = 8, threshold: float = 0.0,
                             dataset_name: str | None = None, split: str | None = None) -> FeatureDictionary:
    """Label every feature of ``model.sae`` from its activations over ``dataset`` (rules in the module docstring).

    Args:
        model: a Qwen2.5-VL [`SegCompassForReasoningSegmentation`]; processor: its [`SegCompassProcessor`].
        dataset: rows of the SegCompass schema, indexable (a ``datasets.Dataset`` or a list of dicts).
        num_samples: use the first N rows (default all).
        top_tokens: text tokens kept per feature; top_cells: image cells kept per feature (each with a crop).
        batch_size: rows per forward; crop_size: side of the stored crops in pixels.
        threshold: minimum activation for a feature to count as firing.
        dataset_name, split: metadata (default: the first row's ``source`` / ``split`` columns).

    Returns:
        the :class:`FeatureDictionary` (``crops`` ``(n, c, c, 3)`` uint8: each distinct top cell once).
    """
    check_qwen(processor)
    for name, value, low in (("top_tokens", top_tokens, 0), ("top_cells", top_cells, 0), ("batch_size", batch_size, 1),
                             ("crop_size", crop_size, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}.")
    total = len(dataset) if num_samples is None else min(int(num_samples), len(dataset))
    if total < 1:
        raise ValueError(f"No rows to run: the dataset has {len(dataset)} rows and num_samples={num_samples!r}; pass "
                         "a non-empty dataset and num_samples >= 1.")
    sae = model.sae
    d_sae, vocab = sae.config.d_sae, len(processor.tokenizer)
    fires = torch.zeros(d_sae, dtype=torch.long)  # (d_sae,)
    activation_sum = torch.zeros(d_sae, dtype=torch.float64)  # (d_sae,)
    image_fires = torch.zeros(d_sae, dtype=torch.long)  # (d_sae,)
    best = _TopCells(d_sae, top_cells)
    text_keys, text_counts = [], []  # per batch: unique feature * V + token id, and counts
    grids, sample_ids, num_tokens = {}, {}, 0
    text_token_counts = torch.zeros(vocab, dtype=torch.long)  # (V,) instruction / reasoning tokens seen, fired or not
    image_tokens = 0
    first_row = dataset[0]
    with EvalMode(model), tqdm(total=total, desc="Labelling SAE features", unit="sample") as bar:
        for start in range(0, total, batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, total))]
            inputs, kinds, cells, row_grids = _batch(model, processor, rows, start)
            for b, row in enumerate(rows):
                grids[start + b] = row_grids[b]
                sample_ids[start + b] = str(row.get("sample_id") or start + b)
            valid = inputs["attention_mask"].bool()  # (B, T)
            hidden = model.get_hook_states(**inputs)[valid]  # (B, T, D) -> (n, D) non-padding tokens
            valid = valid.cpu()
            token_ids = inputs["input_ids"].cpu()[valid]  # (n,)
            kind, cell = kinds[valid], cells[valid]  # (n,)
            owner = torch.arange(len(rows)).unsqueeze(1).expand_as(valid)[valid] + start  # (n,) dataset row
            sparse = sae.encode_sparse(hidden, threshold=threshold)
            rows_of = torch.repeat_interleave(torch.arange(hidden.shape[0]), sparse.offsets.diff().cpu())  # (nnz,)
            feature, value = sparse.indices.cpu(), sparse.values.float().cpu()  # (nnz,)
            num_tokens += hidden.shape[0]
            text_token_counts += torch.bincount(token_ids[(kind == _INSTRUCTION) | (kind == _REASONING)],
                                                minlength=vocab)[:vocab]
            image_tokens += int((kind == _IMAGE).sum())
            fires += torch.bincount(feature, minlength=d_sae)
            activation_sum.index_add_(0, feature, value.double())
            text = (kind[rows_of] == _INSTRUCTION) | (kind[rows_of] == _REASONING)
            keys, counts = torch.unique(feature[text] * vocab + token_ids[rows_of[text]], return_counts=True)
            text_keys.append(keys)
            text_counts.append(counts)
            image = kind[rows_of] == _IMAGE
            image_fires += torch.bincount(feature[image], minlength=d_sae)
            if top_cells and bool(image.any()):
                best.update(feature[image], value[image], owner[rows_of[image]], cell[rows_of[image]])
            bar.update(len(rows))

    # distinct top cells -> crops
    found = best.sample >= 0  # (d_sae, k)
    distinct = sorted({(int(s), int(c)) for s, c in zip(best.sample[found].tolist(), best.cell[found].tolist())})
    crop_of = {key: i for i, key in enumerate(distinct)}
    crops = np.zeros((len(distinct), crop_size, crop_size, 3), dtype=np.uint8)  # (n, c, c, 3)
    for sample in sorted({s for s, _ in distinct}):
        image = load_image(dataset[sample]["image"])
        for s, c in (key for key in distinct if key[0] == sample):
            crops[crop_of[(s, c)]] = _crop(image, grids[s], c, crop_size)

    # text counts per feature, decoded
    decoded: dict[int, str] = {}

    def decode(token: int) -> str:  # the unknown token is text of its span, but unreadable: left out
        if token not in decoded:
            unknown = token == processor.tokenizer.unk_token_id
            decoded[token] = "" if unknown else processor.tokenizer.decode([token]).strip()
        return decoded[token]

    words_of: list[Counter] = [Counter() for _ in range(d_sae)]
    if text_keys:
        keys, inverse = torch.unique(torch.cat(text_keys), return_inverse=True)
        counts = torch.zeros(keys.numel(), dtype=torch.long).index_add_(0, inverse, torch.cat(text_counts))
        for key, count in zip(keys.tolist(), counts.tolist()):
            j, token = divmod(key, vocab)
            if decode(token):
                words_of[j][decode(token)] += count
    seen = text_token_counts.nonzero().flatten().tolist()
    word_tokens = sum(int(text_token_counts[t]) for t in seen if label_word(decode(t)) is not None)

    features = []
    for j in range(d_sae):
        n = int(fires[j])
        cells_j = [{"sample_id": sample_ids[int(best.sample[j, r])], "row": int(best.cell[j, r]) // grids[int(
                    best.sample[j, r])][1], "col": int(best.cell[j, r]) % grids[int(best.sample[j, r])][1],
                    "activation": round(float(best.values[j, r]), 4),
                    "crop": crop_of[(int(best.sample[j, r]), int(best.cell[j, r]))]}
                   for r in range(top_cells) if int(best.sample[j, r]) >= 0]
        pixels = crops[[c["crop"] for c in cells_j]] if cells_j else None
        ranked = sorted(words_of[j].items(), key=lambda item: (-item[1], item[0]))[:top_tokens]
        features.append(FeatureEntry(
            label=label_feature(words_of[j], int(image_fires[j]), pixels, fired=n > 0, word_tokens=word_tokens,
                                image_tokens=image_tokens),
            frequency=float(f"{n / max(num_tokens, 1):.6g}"),
            mean_activation=round(float(activation_sum[j]) / n, 4) if n else 0.0,
            top_text_tokens=[(token, int(count)) for token, count in ranked], top_image_cells=cells_j,
        ))
    dictionary = FeatureDictionary(
        features, hook_layer=int(sae.config.hook_layer), model=_model_name(model),
        dataset=dataset_name or first_row.get("source"), split=split or first_row.get("split"), num_samples=total,
        num_tokens=num_tokens, crops=torch.from_numpy(crops), label_rule=LABEL_RULE,
    )
    alive = int((fires > 0).sum())
    logger.info("feature dictionary: %d of %d features fired over %d samples (%d tokens)", alive, d_sae, total,
                num_tokens)
    return dictionary
