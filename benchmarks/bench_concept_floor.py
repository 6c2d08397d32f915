"""Concept path vs its floor, the SAE encoder matmul, measured in the same process.

The concept path must compute every encoder pre-activation once (``x @ W_enc``, (T, d_in) @ (d_in, d_sae)); all it
does beyond that (bias, gate, pooling, top-N, the gradient-carrying recomputation of the N kept features, the concept
interface over K + N tokens) is overhead on that floor. Ours: `SparseAutoencoder.pooled_concepts` +
`last_activation_distance` + `SparseConceptInterface` forward, as the model runs them; and, for scale, the dense `SparseAutoencoder.encode`
(the whole (T, d_sae) codes, bias and gate included). Reference for both: the plain matmul.
Paper sizes by default (Qwen2.5-VL-7B hook, d_sae 65 536, T 2048, N 256, K 6, d_c 512); the SAE is randomly
initialised, so with τ = 0 about half the (token, feature) pairs are active, the densest case.

    python benchmarks/bench_concept_floor.py [--tokens 2048 --d-in 3584 --d-sae 65536 --repeats 3 --threads 1]

Prints one line per comparison, ``name: ours X s, reference Y s, ratio Z``; `run(args)` returns the same as dicts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from segcompass import SparseAutoencoder, SparseAutoencoderConfig
from segcompass.modules.concept_interface import SparseConceptInterface, last_activation_distance

try:
    from _timing import format_result, timed_interleaved  # run as a script: benchmarks/ is on sys.path
except ModuleNotFoundError:  # imported as benchmarks.bench_concept_floor from the repository root
    from benchmarks._timing import format_result, timed_interleaved

NAME = "concept path vs SAE encode matmul"
ENCODE_NAME = "SAE encode (dense codes) vs SAE encode matmul"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2048, help="T, tokens of the one sample")
    parser.add_argument("--d-in", type=int, default=3584, help="hooked hidden size (Qwen2.5-VL-7B: 3584)")
    parser.add_argument("--d-sae", type=int, default=65536, help="SAE dictionary size (paper: 65536)")
    parser.add_argument("--d-c", type=int, default=512, help="codebook width (paper: 512)")
    parser.add_argument("--top-n", type=int, default=256, help="N, concepts kept")
    parser.add_argument("--slots", type=int, default=6, help="K, slots (paper: 6)")
    parser.add_argument("--layers", type=int, default=2, help="concept encoder blocks")
    parser.add_argument("--heads", type=int, default=8, help="concept encoder heads")
    parser.add_argument("--ffn-dim", type=int, default=2048, help="concept encoder FFN width")
    parser.add_argument("--threshold", type=float, default=0.0, help="τ (SegCompassConfig.concept_threshold)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: leave torch's)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def run(args: argparse.Namespace | Sequence[str] | None = None) -> list[dict]:
    """Measure the comparison; ``args``: parsed flags, a list of flag strings, or None for the defaults.

    Returns ``[{"name", "ours", "reference", "ratio", "unit"}]`` (seconds per call, ratio ours / reference).
    """
    if not isinstance(args, argparse.Namespace):
        args = build_parser().parse_args(list(args or []))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    sae = SparseAutoencoder(SparseAutoencoderConfig(d_in=args.d_in, d_sae=args.d_sae)).eval()
    interface = SparseConceptInterface(args.d_sae, args.d_c, args.slots, num_layers=args.layers,
                                       num_heads=args.heads, ffn_dim=args.ffn_dim).eval()
    hidden = torch.randn(1, args.tokens, args.d_in)  # (B, T, d_in)
    attention_mask = torch.ones(1, args.tokens, dtype=torch.long)  # (B, T)
    flat = hidden[0]  # (T, d_in)

    @torch.no_grad()
    def floor():
        return flat @ sae.W_enc  # (T, d_sae)

    @torch.no_grad()
    def concept_path():
        concepts = sae.pooled_concepts(hidden, attention_mask, threshold=args.threshold, top_n=args.top_n)
        distances = last_activation_distance(concepts.active, attention_mask)  # (B, N)
        return interface(concepts.indices, concepts.values, concepts.mask, distances)[0]  # (B, K, d_c)

    @torch.no_grad()
    def encode():
        return sae.encode(hidden)  # (B, T, d_sae): the dense codes, bias and gate included

    times = timed_interleaved({"floor": floor, NAME: concept_path, ENCODE_NAME: encode}, args.repeats)
    reference = times["floor"]
    return [{"name": name, "ours": times[name], "reference": reference, "ratio": times[name] / reference, "unit": "s"}
            for name in (NAME, ENCODE_NAME)]


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    print(f"T={args.tokens} d_in={args.d_in} d_sae={args.d_sae} d_c={args.d_c} N={args.top_n} K={args.slots} "
          f"tau={args.threshold} threads={args.threads or torch.get_num_threads()} repeats={args.repeats}",
          file=sys.stderr)
    for row in run(args):
        print(format_result(row))


if __name__ == "__main__":
    main()
