"""The feature dictionary: a readable label and activation statistics for every SAE feature.

Dimension glossary: ``d_sae`` SAE features, ``n`` stored crops, ``(h, w)`` crop size.

On disk, beside the SAE (or the SegCompass checkpoint that holds it):

* ``feature_dictionary.json``: ``{"format": "segcompass-feature-dictionary", "version": 1, "d_sae", "hook_layer",
  "model", "dataset", "split", "num_samples", "num_tokens", "label_rule", "samples": [sample ids], "features":
  [d_sae entries]}``, one feature per line; entry ``j`` is ``{"label": str | null, "frequency": float,
  "mean_activation": float, "top_text_tokens": [[token, count], ...], "top_image_cells": [[sample, row, col,
  activation, crop], ...]}`` (``label`` is null for a feature that never fired; a cell's ``sample`` indexes
  ``"samples"`` and its ``crop`` the crops file, null without one). In memory a cell is the dict ``{"sample_id",
  "row", "col", "activation", "crop"}``;
* ``feature_crops.safetensors`` (optional): ``crops`` ``(n, h, w, 3)`` uint8 RGB, the pixels of the stored image
  cells (each distinct cell once, shared by every feature that lists it).

Both files are written atomically. :class:`FeatureDictionaryMixin` makes ``save_pretrained`` / ``from_pretrained``
of a model that holds a :class:`~segcompass.sae.SparseAutoencoder` carry the dictionary; the statistics are
computed by :func:`segcompass.interpret.features.build_feature_dictionary`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..utils.io import atomic_path, write_text_atomic
from ..utils.logging import get_logger

logger = get_logger(__name__)

DICTIONARY_NAME = "feature_dictionary.json"
CROPS_NAME = "feature_crops.safetensors"
FORMAT = "segcompass-feature-dictionary"
VERSION = 1
_CELL_KEYS = ("sample_id", "row", "col", "activation", "crop")


@dataclass
class FeatureEntry:
    """What one SAE feature stands for.

    Args:
        label: short readable text (``"purple"``, ``"image: blue"``, ``"(unlabelled)"``); ``None`` if it never fired.
        frequency: fraction of the scored (non-padding) tokens where it fires.
        mean_activation: mean activation over the tokens where it fires (0.0 if it never fired).
        top_text_tokens: ``[(token, count), ...]``, the instruction / reasoning tokens it fires on, most frequent first.
        top_image_cells: ``[{"sample_id", "row", "col", "activation", "crop"}, ...]``, the image tokens where it fires
            most, strongest first (``row``/``col`` on the merged image-token grid; ``crop`` indexes
            :attr:`FeatureDictionary.crops`, ``None`` without crops).
    """

    label: str | None = None
    frequency: float = 0.0
    mean_activation: float = 0.0
    top_text_tokens: list[tuple[str, int]] = field(default_factory=list)
    top_image_cells: list[dict] = field(default_factory=list)


def _entry_from_json(item, index: int, source: str, samples: list) -> FeatureEntry:
    def bad(what: str) -> ValueError:
        return ValueError(f"{source}: feature {index} {what}; rebuild the file with `segcompass label-features`.")

    if not isinstance(item, dict):
        raise bad(f"is a {type(item).__name__}, expected an object")
    label = item.get("label")
    if label is not None and not isinstance(label, str):
        raise bad(f"has label {label!r}, expected a string or null")
    try:
        tokens = [(str(token), int(count)) for token, count in item.get("top_text_tokens", [])]
        frequency, mean = float(item.get("frequency", 0.0)), float(item.get("mean_activation", 0.0))
    except (TypeError, ValueError) as err:
        raise bad(f"has malformed statistics ({err})") from err
    if not 0.0 <= frequency <= 1.0:
        raise bad(f"has frequency {frequency}, expected a fraction in [0, 1]")
    cells = []
    for cell in item.get("top_image_cells", []):
        if not (isinstance(cell, list) and len(cell) == 5 and all(isinstance(v, int) for v in cell[:3])
                and 0 <= cell[0] < len(samples) and isinstance(cell[3], (int, float))):
            raise bad(f"has image cell {cell!r}; expected [sample, row, col, activation, crop] with sample an index "
                      f"into the {len(samples)} \"samples\"")
        cells.append(dict(zip(_CELL_KEYS, [samples[cell[0]], *cell[1:]])))
    return FeatureEntry(label, frequency, mean, tokens, cells)


@dataclass(eq=False)  # identity equality: comparing the crops tensors has no single truth value
class FeatureDictionary:
    """Per-feature labels and statistics of one SAE (``len(dictionary) == d_sae``).

    Args:
        features: ``d_sae`` :class:`FeatureEntry`, indexed by feature.
        hook_layer: the SAE's hook layer (index into ``hidden_states``) the statistics were measured at.
        model, dataset, split: where they were measured (informational).
        num_samples, num_tokens: samples run and scored (non-padding) tokens seen.
        crops (`torch.ByteTensor` of shape `(n, h, w, 3)`, *optional*): RGB pixels of the stored image cells.
        label_rule: how the labels were chosen, in words (informational).
    """

    features: list[FeatureEntry]
    hook_layer: int
    model: str | None = None
    dataset: str | None = None
    split: str | None = None
    num_samples: int = 0
    num_tokens: int = 0
    crops: torch.Tensor | None = None
    label_rule: str = ""

    def __post_init__(self):
        if not self.features:
            raise ValueError("A FeatureDictionary needs one entry per SAE feature; got none.")
        crops = self.crops
        if crops is not None and (crops.dtype != torch.uint8 or crops.dim() != 4 or crops.shape[-1] != 3):
            raise ValueError(f"`crops` must be a uint8 tensor of shape (n, h, w, 3), got {crops.dtype} "
                             f"{tuple(crops.shape)}.")
        limit = 0 if self.crops is None else self.crops.shape[0]
        for index, entry in enumerate(self.features):
            for cell in entry.top_image_cells:
                crop = cell.get("crop")
                if crop is not None and not (isinstance(crop, int) and 0 <= crop < limit):
                    raise ValueError(f"feature {index}: image cell {cell} points at crop {crop!r} but there are "
                                     f"{limit} crops; keep feature_crops.safetensors with its feature_dictionary.json.")

    # ------------------------------------------------------------------ access
    @property
    def d_sae(self) -> int:
        return len(self.features)

    def __len__(self) -> int:
        return len(self.features)

    def _check_index(self, index) -> int:
        if isinstance(index, torch.Tensor):
            index = index.item()
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.d_sae:
            raise ValueError(f"feature index {index!r} is out of range for a dictionary of d_sae={self.d_sae} "
                             f"features; pass an int in [0, {self.d_sae}).")
        return index

    def __getitem__(self, index) -> FeatureEntry:
        return self.features[self._check_index(index)]

    def label(self, index) -> str | None:
        """Feature ``index``'s label (``None`` when it never fired while the dictionary was built)."""
        return self[index].label

    def crops_of(self, index) -> torch.Tensor | None:
        """``(k, h, w, 3)`` uint8: the crops of feature ``index``'s top image cells (``None`` without crops)."""
        if self.crops is None:
            return None
        rows = [c["crop"] for c in self[index].top_image_cells if c.get("crop") is not None]
        return self.crops[rows]  # (k, h, w, 3)

    def most_frequent(self, n: int = 10, labelled: bool = True) -> list[int]:
        """Indices of the ``n`` most frequent features (with ``labelled``: only those with a real label, i.e. not
        ``None`` nor ``"(unlabelled)"``), most frequent first."""
        order = sorted(range(self.d_sae), key=lambda j: -self.features[j].frequency)
        if labelled:
            order = [j for j in order if self.features[j].label not in (None, "(unlabelled)")]
        return [j for j in order if self.features[j].frequency > 0][:n]

    def check(self, d_sae: int, hook_layer: int | None = None, source: str = "the feature dictionary") -> None:
        """Raise a ``ValueError`` unless this dictionary describes an SAE with ``d_sae`` features (at ``hook_layer``)."""
        if self.d_sae != d_sae:
            raise ValueError(f"{source} describes {self.d_sae} features but the SAE has d_sae={d_sae}; it belongs to "
                             "another SAE. Rebuild it for this model with `segcompass label-features --model ...`.")
        if hook_layer is not None and self.hook_layer != hook_layer:
            raise ValueError(f"{source} was measured at hook layer {self.hook_layer} but the SAE reads hook_layer="
                             f"{hook_layer}; rebuild it for this model with `segcompass label-features --model ...`.")

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        """The JSON payload of ``feature_dictionary.json`` (the crops are not part of it)."""
        samples: dict[str, int] = {}
        features = []
        for entry in self.features:
            item = asdict(entry)
            item["top_text_tokens"] = [[token, count] for token, count in entry.top_text_tokens]
            item["top_image_cells"] = [[samples.setdefault(str(cell["sample_id"]), len(samples)),
                                        *(cell.get(key) for key in _CELL_KEYS[1:])] for cell in entry.top_image_cells]
            features.append(item)
        meta = {k: getattr(self, k) for k in ("hook_layer", "model", "dataset", "split", "num_samples", "num_tokens",
                                              "label_rule")}
        return {"format": FORMAT, "version": VERSION, "d_sae": self.d_sae, **meta, "samples": list(samples),
                "features": features}

    @classmethod
    def from_dict(cls, payload, crops: torch.Tensor | None = None, source: str = DICTIONARY_NAME) -> FeatureDictionary:
        """Read a :meth:`to_dict` payload; a ``ValueError`` naming ``source`` and the problem when it is malformed."""
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"{source} is not a SegCompass feature dictionary (expected \"format\": \"{FORMAT}\"); "
                             "write one with `segcompass label-features`.")
        if payload.get("version") != VERSION:
            raise ValueError(f"{source} has version {payload.get('version')!r}; this segcompass reads version "
                             f"{VERSION}. Rebuild it with `segcompass label-features`.")
        features = payload.get("features")
        if not isinstance(features, list) or payload.get("d_sae") != len(features) or not features:
            count = len(features) if isinstance(features, list) else features
            raise ValueError(f"{source} declares d_sae={payload.get('d_sae')!r} but lists {count} features; the file "
                             "is truncated or edited. Rebuild it with `segcompass label-features`.")
        samples = payload.get("samples", [])
        if not isinstance(samples, list) or not all(isinstance(sample, str) for sample in samples):
            raise ValueError(f"{source}: \"samples\" must be a list of sample ids, got {samples!r:.80}; rebuild it "
                             "with `segcompass label-features`.")
        entries = [_entry_from_json(item, j, source, samples) for j, item in enumerate(features)]
        meta = {k: payload.get(k) for k in ("model", "dataset", "split")}
        counts = {k: int(payload.get(k, 0)) for k in ("hook_layer", "num_samples", "num_tokens")}
        return cls(entries, crops=crops, label_rule=payload.get("label_rule", ""), **counts, **meta)

    def save(self, directory) -> None:
        """Write ``feature_dictionary.json`` (and ``feature_crops.safetensors`` when there are crops; a stale crops
        file is removed when there are none) into ``directory``, each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        crops_path = directory / CROPS_NAME
        if self.crops is not None:
            from safetensors.torch import save_file

            with atomic_path(crops_path) as tmp:
                save_file({"crops": self.crops.contiguous()}, str(tmp), metadata={"format": FORMAT})
        elif crops_path.is_file():
            crops_path.unlink()
        payload = self.to_dict()
        features, samples = payload.pop("features"), payload.pop("samples")
        head = json.dumps(payload, indent=1)[:-2]  # without the closing "\n}": samples and features follow
        lines = ",\n  ".join(json.dumps(item, separators=(",", ":")) for item in features)
        text = f'{head},\n "samples": {json.dumps(samples)},\n "features": [\n  {lines}\n ]\n}}\n'
        write_text_atomic(directory / DICTIONARY_NAME, text)

    @classmethod
    def load(cls, directory, d_sae: int | None = None, hook_layer: int | None = None) -> FeatureDictionary:
        """Read the dictionary in ``directory`` (crops too when present); checked against ``d_sae`` / ``hook_layer``
        when given (:meth:`check`)."""
        return cls.from_files(Path(directory) / DICTIONARY_NAME, Path(directory) / CROPS_NAME, d_sae, hook_layer)

    @classmethod
    def from_files(cls, json_path, crops_path=None, d_sae: int | None = None,
                   hook_layer: int | None = None) -> FeatureDictionary:
        """Read ``json_path`` (and ``crops_path`` when it exists); see :meth:`load`."""
        json_path = Path(json_path)
        if not json_path.is_file():
            raise ValueError(f"{json_path} does not exist; build a feature dictionary with `segcompass label-features`.")
        try:
            payload = json.loads(json_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{json_path} is not valid JSON ({err}); rebuild it with `segcompass label-features`.") from err
        crops = None
        if crops_path is not None and Path(crops_path).is_file():
            from safetensors.torch import load_file

            crops = load_file(str(crops_path)).get("crops")
        dictionary = cls.from_dict(payload, crops, source=str(json_path))
        if d_sae is not None:
            dictionary.check(d_sae, hook_layer, source=str(json_path))
        return dictionary


# ---------------------------------------------------------------------------------------------- finding the files
def _hub_file(repo_id: str, filename: str, hub: dict) -> str | None:
    """The cached path of ``filename`` in Hub repository ``repo_id`` (downloaded unless ``local_files_only``), or
    ``None`` when the repository has no such file (or it is not cached and we may not download)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        return hf_hub_download(repo_id, filename, **hub)
    except (EntryNotFoundError, LocalEntryNotFoundError, OfflineModeIsEnabled):
        return None


def find_feature_dictionary(source, d_sae: int | None = None, hook_layer: int | None = None, *, subfolder: str = "",
                            **hub_kwargs) -> FeatureDictionary | None:
    """The feature dictionary saved with the model at ``source`` (a local directory or a Hub repository id), or
    ``None`` when there is none. Hub files come from the local cache when ``local_files_only`` (or offline mode);
    ``hub_kwargs``: ``revision``, ``cache_dir``, ``token``, ``force_download``, ``local_files_only``."""
    local = Path(source) / subfolder if subfolder else Path(source)
    if local.is_dir():
        if not (local / DICTIONARY_NAME).is_file():
            return None
        return FeatureDictionary.load(local, d_sae, hook_layer)
    from huggingface_hub import is_offline_mode

    hub = {k: v for k, v in hub_kwargs.items() if v is not None}
    if is_offline_mode():
        hub["local_files_only"] = True
    hub["subfolder"] = subfolder or None
    json_path = _hub_file(str(source), DICTIONARY_NAME, hub)
    if json_path is None:
        return None
    crops_path = _hub_file(str(source), CROPS_NAME, hub)
    return FeatureDictionary.from_files(json_path, crops_path, d_sae, hook_layer)


_HUB_KWARGS = ("revision", "cache_dir", "token", "force_download", "local_files_only", "subfolder")


class FeatureDictionaryMixin:
    """``save_pretrained`` / ``from_pretrained`` that carry the feature dictionary of the model's SAE.

    Put it before ``PreTrainedModel`` in the bases; ``_feature_dictionary_sae`` names the submodule that is the
    :class:`~segcompass.sae.SparseAutoencoder` (``""``: the model itself). ``save_pretrained`` writes the SAE's
    ``feature_dictionary`` beside the checkpoint (and removes a stale one when it has none); ``from_pretrained``
    loads ``feature_dictionary.json`` when the checkpoint has one, checked against the SAE's ``d_sae``.
    """

    _feature_dictionary_sae = ""

    def _dictionary_sae(self):
        return self.get_submodule(self._feature_dictionary_sae)

    def save_pretrained(self, save_directory, *args, **kwargs):
        dictionary = getattr(self._dictionary_sae(), "feature_dictionary", None)
        push = kwargs.pop("push_to_hub", False)
        hub = {k: kwargs.pop(k) for k in ("repo_id", "commit_message", "create_pr", "private") if k in kwargs}
        super().save_pretrained(save_directory, *args, **kwargs)
        if not kwargs.get("is_main_process", args[0] if args else True):
            return
        if dictionary is not None:
            dictionary.save(save_directory)
        else:
            for name in (DICTIONARY_NAME, CROPS_NAME):
                stale = Path(save_directory) / name
                if stale.is_file():
                    logger.info("removing %s: the saved SAE has no feature dictionary", stale)
                    stale.unlink()
        if push:  # push_to_hub saves into a fresh folder through this method, so the dictionary goes up too
            repo_id = hub.pop("repo_id", Path(save_directory).name)
            self.push_to_hub(repo_id, token=kwargs.get("token"), **hub)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        hub = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = loaded[0] if kwargs.get("output_loading_info") else loaded
        if pretrained_model_name_or_path is not None:
            sae = model._dictionary_sae()
            sae.feature_dictionary = find_feature_dictionary(pretrained_model_name_or_path, sae.config.d_sae,
                                                             sae.config.hook_layer, **hub)
        return loaded
