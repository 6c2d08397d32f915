"""Concept path: SegCompass's sparse design vs the authors' dense one, measured in the same run.

Reference (authors' code, official-implementation.md §1.6): dense SAE codes for every token, thresholded, then a
dense Linear(d_sae -> d_c) codebook applied to every token and the encoder run over all K + T tokens.
Ours: chunked top-N selection (`SparseAutoencoder.pooled_concepts`), a sparse codebook gather for N concepts, and
an encoder over K + N tokens. Prints wall time and the largest dense code tensor of each, and their ratios.

    python benchmarks/bench_concepts.py [--tokens 1024 --d-in 512 --d-sae 16384 --repeats 3]
"""

import argparse

import torch

from segcompass import SparseAutoencoder, SparseAutoencoderConfig
from segcompass.modules.concept_interface import SparseConceptInterface

from _timing import timed  # benchmarks/_timing.py


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--d-in", type=int, default=512)
    parser.add_argument("--d-sae", type=int, default=16384)
    parser.add_argument("--d-c", type=int, default=128)
    parser.add_argument("--top-n", type=int, default=256)
    parser.add_argument("--slots", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sae = SparseAutoencoder(SparseAutoencoderConfig(d_in=args.d_in, d_sae=args.d_sae)).eval()
    interface = SparseConceptInterface(args.d_sae, args.d_c, args.slots, num_layers=2, num_heads=4,
                                       ffn_dim=4 * args.d_c).eval()
    hidden = torch.randn(1, args.tokens, args.d_in)
    threshold = 0.5
    dense_codebook = interface.codebook.weight  # (d_sae, d_c) used as a dense Linear by the reference

    @torch.no_grad()
    def reference():
        codes = sae.encode(hidden)  # (1, T, d_sae) dense
        codes = codes * (codes >= threshold)
        tokens = codes @ dense_codebook  # (1, T, d_c): dense (T x d_sae) @ (d_sae x d_c)
        x = torch.cat([interface.slot_queries[None], tokens], 1)  # (1, K + T, d_c)
        padding = torch.zeros(1, x.shape[1], dtype=torch.bool)
        for layer in interface.layers:
            x, _ = layer(x, padding)
        return x[:, : args.slots]

    @torch.no_grad()
    def ours():
        concepts = sae.pooled_concepts(hidden, threshold=threshold, top_n=args.top_n)
        return interface(concepts.indices, concepts.values, concepts.mask)[0]

    t_ref, t_ours = timed(reference, args.repeats), timed(ours, args.repeats)
    dense_elements = args.tokens * args.d_sae
    chunk_elements = min(args.tokens, sae._token_chunk(1)) * args.d_sae
    print(f"tokens={args.tokens} d_in={args.d_in} d_sae={args.d_sae} d_c={args.d_c} N={args.top_n} K={args.slots}")
    print(f"reference (dense codes, dense codebook, encoder over K+T): {t_ref * 1e3:8.1f} ms")
    print(f"segcompass (chunked top-N, sparse gather, encoder over K+N): {t_ours * 1e3:8.1f} ms")
    print(f"speed-up: {t_ref / t_ours:.2f}x")
    print(f"largest dense code tensor: reference {dense_elements:,} elements, ours {chunk_elements:,} "
          f"({dense_elements / chunk_elements:.1f}x smaller)")
    print(f"codebook FLOPs per sample: reference {2 * args.tokens * args.d_sae * args.d_c:,}, "
          f"ours {args.top_n * args.d_c:,} multiply-adds")


if __name__ == "__main__":
    main()
