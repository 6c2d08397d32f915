"""Train a Sparse Autoencoder on hidden states of any transformers model, then inspect a few features.

    python examples/train_sae.py --model path/to/causal-lm --dataset corpus.jsonl --hook_layer 2 --output_dir runs/sae
    python examples/train_sae.py --tiny --output_dir runs/sae-tiny        # builds a tiny random LM and corpus offline
"""

import argparse

import datasets
import torch

from segcompass import SparseAutoencoder, SparseAutoencoderConfig
from segcompass.sae.activations import ActivationStore, cache_activations
from segcompass.sae.training import SAETrainer, SAETrainingArguments


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--dataset")
    parser.add_argument("--hook_layer", type=int, default=1)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    if args.tiny:
        from segcompass.testing import tiny_causal_lm

        model, tokenizer = tiny_causal_lm()
        texts = ["the red circle is left of the blue square", "every green shape", "the largest triangle"] * 30
        data = datasets.Dataset.from_dict({"text": texts})
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model, tokenizer = AutoModelForCausalLM.from_pretrained(args.model), AutoTokenizer.from_pretrained(args.model)
        data = datasets.load_dataset("json", data_files=args.dataset, split="train")
    cache = cache_activations(model, tokenizer, data, f"{args.output_dir}/activations", hook_layer=args.hook_layer)
    store = ActivationStore.from_cache(cache)
    sae = SparseAutoencoder(SparseAutoencoderConfig(d_in=store.d_in, d_sae=8 * store.d_in, hook_layer=args.hook_layer,
                                                    l1_coefficient=1.0))
    metrics = SAETrainer(sae, SAETrainingArguments(output_dir=args.output_dir, learning_rate=1e-3, num_epochs=3,
                                                   batch_size=16), store).train()
    print("held-out:", {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    ids = tokenizer(data[0]["text"], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**ids, output_hidden_states=True).hidden_states[args.hook_layer]
    features = sae.encode_sparse(hidden[0], threshold=0.05)
    for t, token in enumerate(tokenizer.convert_ids_to_tokens(ids.input_ids[0])):
        idx, val = features.token(t)
        top = sorted(zip(val.tolist(), idx.tolist()), reverse=True)[:3]
        print(f"{token:>10}: " + ", ".join(f"f{j}={v:.2f}" for v, j in top))


if __name__ == "__main__":
    main()
