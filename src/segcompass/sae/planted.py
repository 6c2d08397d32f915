"""Activations generated from a planted sparse dictionary: data with a known answer for SAE training.

``x = Σ_j c_j · D_j + noise`` where each sample has exactly ``sparsity`` active atoms ``D_j`` (unit-norm rows of a
random dictionary) with positive coefficients. A good SAE recovers the atoms as decoder rows, explains most of
the variance, and fires about ``sparsity`` features per sample.

:class:`PlantedDemo` holds the built-in demo of ``segcompass train-sae --planted``: the data, the SAE and the
training settings with which it recovers the planted atoms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PlantedDemo:
    """The built-in demo (``segcompass train-sae --planted``): 64 unit-norm atoms in 64 dimensions, 3 active per
    sample, and a 128-feature ReLU SAE trained with ``learning_rate`` and ``l1_coefficient`` for 10 epochs of 64
    samples a step (the ``SAETrainingArguments`` defaults). With these it recovers every planted atom in a few
    seconds; the paper's learning rate (5e-5) and α = 5, meant for real activations over many more tokens, recover
    none in 10 epochs on 8 000 samples.
    """

    num_samples: int = 8000
    num_held_out: int = 2000
    d_in: int = 64
    num_atoms: int = 64
    sparsity: int = 3
    magnitude_range: tuple[float, float] = (1.0, 3.0)
    d_sae: int = 128
    l1_coefficient: float = 0.5
    learning_rate: float = 3e-3
    min_cosine: float = 0.9
    """A planted atom counts as recovered when some decoder row has at least this cosine similarity with it."""

    def data(self) -> tuple[PlantedDictionary, PlantedDictionary]:
        """The training samples (seed 0) and held-out samples (seed 1) of one planted dictionary."""
        train = make_planted_dictionary(self.num_samples, d_in=self.d_in, num_atoms=self.num_atoms,
                                        sparsity=self.sparsity, magnitude_range=self.magnitude_range, seed=0)
        held_out = make_planted_dictionary(self.num_held_out, sparsity=self.sparsity, seed=1,
                                           dictionary=train.dictionary, magnitude_range=self.magnitude_range)
        return train, held_out


@dataclass
class PlantedDictionary:
    """Samples and the ground truth that produced them.

    Args:
        activations (`torch.FloatTensor` of shape `(num_samples, d_in)`).
        codes (`torch.FloatTensor` of shape `(num_samples, num_atoms)`): the planted sparse codes.
        dictionary (`torch.FloatTensor` of shape `(num_atoms, d_in)`): unit-norm atoms.
    """

    activations: torch.Tensor
    codes: torch.Tensor
    dictionary: torch.Tensor
    sparsity: int


def make_planted_dictionary(
    num_samples: int,
    d_in: int = 32,
    num_atoms: int = 64,
    sparsity: int = 3,
    noise_std: float = 0.01,
    magnitude_range: tuple[float, float] = (0.5, 2.0),
    seed: int = 0,
    dictionary: torch.Tensor | None = None,
) -> PlantedDictionary:
    """Draw ``num_samples`` activations from a planted dictionary (a fresh one unless ``dictionary`` is given).

    Active atoms get coefficients uniform in ``magnitude_range``.
    """
    if not 1 <= sparsity <= num_atoms:
        raise ValueError(f"`sparsity` must be in [1, num_atoms={num_atoms}], got {sparsity}.")
    generator = torch.Generator().manual_seed(seed)
    if dictionary is None:
        dictionary = torch.randn(num_atoms, d_in, generator=generator)
        dictionary = dictionary / dictionary.norm(dim=-1, keepdim=True)  # (num_atoms, d_in)
    num_atoms, d_in = dictionary.shape
    scores = torch.rand(num_samples, num_atoms, generator=generator)
    active = scores.topk(sparsity, dim=-1).indices  # (num_samples, sparsity)
    low, high = magnitude_range
    magnitudes = low + torch.rand(num_samples, sparsity, generator=generator) * (high - low)
    codes = torch.zeros(num_samples, num_atoms).scatter(-1, active, magnitudes)  # (num_samples, num_atoms)
    activations = codes @ dictionary + noise_std * torch.randn(num_samples, d_in, generator=generator)
    return PlantedDictionary(activations=activations, codes=codes, dictionary=dictionary, sparsity=sparsity)


def atom_recovery(decoder: torch.Tensor, dictionary: torch.Tensor, min_cosine: float = 0.9) -> float:
    """Fraction of planted atoms whose best-matching decoder row has cosine similarity >= ``min_cosine``.

    Args:
        decoder (`torch.FloatTensor` of shape `(d_sae, d_in)`), dictionary (`(num_atoms, d_in)`).
    """
    dec = decoder / decoder.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    cos = dictionary @ dec.T  # (num_atoms, d_sae)
    return float((cos.max(dim=-1).values >= min_cosine).float().mean())
