"""The commands of ``segcompass``: name -> (module of :mod:`segcompass.commands`, entry function, summary)."""

#: command name -> (module of segcompass.commands, entry function, one-line summary for ``segcompass --help``)
COMMANDS = {
    "train-sae": ("train_sae", "train_sae_command",
                  "Cache hidden states and train a Sparse Autoencoder (or run the --planted demo)."),
    "segment": ("segment", "segment_command",
                "Segment an image from an instruction; print the reasoning, instances and concepts."),
    "train": ("train", "train_command",
              "Supervised warm-up + GRPO training of a SegCompass model (options or --config YAML)."),
    "train-tiny": ("train_tiny", "train_tiny_command",
                   "Train the tiny synthetic-domain SegCompass end to end (the shipped default; --smoke for CI)."),
    "evaluate": ("evaluate", "evaluate_command",
                 "Evaluate a checkpoint on a benchmark split: predictions.jsonl + report.json (--rescore: no model)."),
    "demo": ("demo", "demo_command",
             "Run a model on synthetic scenes and write an HTML gallery (overlays, heatmaps, concepts)."),
    "explain": ("explain", "explain_command",
                "Interpretability analyses (paper Figs. 4, 5, 8, 9): explain.json + PNG figures (needs [interpret])."),
    "app": ("app", "app_command",
            "Serve the browser app on 127.0.0.1: reasoning, overlay, slot heatmaps and concepts (needs [app])."),
    "label-features": ("label_features", "label_features_command",
                       "Label every SAE feature from its activations over a dataset (writes feature_dictionary.json)."),
    "build": ("build", "build_command",
              "Assemble a full-size checkpoint from a pretrained backbone, SAM and SAE (--dry-run: sizes only)."),
}
