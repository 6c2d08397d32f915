"""Mask path: one batched decoder call over B*K slots vs the authors' per-sample Python loop (same weights, same
inputs, measured in the same run; official-implementation.md §1.8 step 3).

    python benchmarks/bench_mask_decoder.py [--batch 8 --slots 6 --repeats 5]
"""

import argparse

import torch
from transformers import SamConfig

from segcompass.modules.mask_decoder import HeatmapMaskDecoder

from _timing import timed  # benchmarks/_timing.py


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--slots", type=int, default=6)
    parser.add_argument("--grid", type=int, default=32, help="image-embedding grid h = w (SAM: 64)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    size = args.grid * 16
    config = SamConfig(prompt_encoder_config=dict(image_size=size, image_embedding_size=args.grid),
                       vision_config=dict(image_size=size))
    decoder = HeatmapMaskDecoder(config).eval()
    embeddings = torch.randn(args.batch, 256, args.grid, args.grid)
    heatmaps = torch.randn(args.batch, args.slots, 4 * args.grid, 4 * args.grid)

    @torch.no_grad()
    def per_sample():
        return torch.cat([decoder(embeddings[b : b + 1], heatmaps[b : b + 1])[0] for b in range(args.batch)])

    @torch.no_grad()
    def batched():
        return decoder(embeddings, heatmaps)[0]

    torch.testing.assert_close(per_sample(), batched(), atol=1e-4, rtol=1e-4)
    t_loop, t_batch = timed(per_sample, args.repeats), timed(batched, args.repeats)
    print(f"B={args.batch} K={args.slots} grid={args.grid} (masks {4 * args.grid}x{4 * args.grid}), full-size decoder")
    print(f"per-sample loop (reference): {t_loop * 1e3:8.1f} ms")
    print(f"batched over B*K (ours):     {t_batch * 1e3:8.1f} ms")
    print(f"speed-up: {t_loop / t_batch:.2f}x (outputs equal to 1e-4)")


if __name__ == "__main__":
    main()
