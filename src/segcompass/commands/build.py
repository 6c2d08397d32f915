"""``segcompass build``: assemble a full-size SegCompass checkpoint from its pretrained parts, or size it first.

``segcompass build --preset qwen2.5-vl-7b --backbone Qwen/Qwen2.5-VL-7B-Instruct --sam sam_vit_h_4b8939.pth
[--sae DIR] --output-dir ./segcompass-qwen7b`` runs :func:`segcompass.assembly.build_checkpoint` (the new heads start
untrained; the checkpoint's README.md says which parts are pretrained). ``--dry-run`` builds the preset on the meta
device instead (no weights, no downloads) and prints its parameter counts and weight memory per dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._args import CommandError, command

__all__ = ["BuildArguments", "build_command", "format_dry_run"]


def _presets() -> list[str]:
    from ..presets import PRESETS

    return sorted(PRESETS)


@dataclass
class BuildArguments:
    """Options of ``segcompass build``."""

    preset: str | None = field(default=None, metadata={
        "help": "Head sizes and defaults (default: the backbone family's); with --dry-run, the model to size.",
        "choices": _presets})
    backbone: str | None = field(default=None, metadata={
        "help": "Qwen2.5-VL or LLaVA-1.5 checkpoint: Hub id or local directory (e.g. Qwen/Qwen2.5-VL-7B-Instruct)."})
    sam: str | None = field(default=None, metadata={
        "help": "SAM: an original sam_vit_*.pth or a transformers sam-vit-* directory (default: untrained)."})
    sae: str | None = field(default=None, metadata={
        "help": "SAE directory, our format or SAELens (default: a fresh, untrained SAE from the preset)."})
    output_dir: str | None = field(default=None, metadata={"help": "Where to write the checkpoint."})
    num_slots: int | None = field(default=None, metadata={"help": "K, slots per sample (default: the preset's)."})
    dtype: str | None = field(default=None, metadata={
        "help": "Weights dtype (default: the backbone's); with --dry-run, the dtype to mark.",
        "choices": ["float32", "bfloat16", "float16"]})
    max_shard_size: str = field(default="5GB", metadata={"help": "Safetensors shard size."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty --output-dir."})
    dry_run: bool = field(default=False, metadata={
        "help": "Only print the preset's parameter counts and memory per dtype (meta device: nothing allocated)."})


def format_dry_run(report: dict) -> str:
    """The table ``segcompass build --dry-run`` prints for a :func:`segcompass.assembly.dry_run` report."""
    from ..assembly import BYTES_PER_PARAMETER

    counts = report["parameters"]
    labels = [("backbone", "backbone"), ("vision_tower", "  of which vision tower"), ("sae", "SAE"),
              ("concept_interface", "concept interface"), ("slot_mapper", "slot mapper"),
              ("sam_encoder", "SAM image encoder"), ("mask_decoder", "mask decoder"), ("total", "total")]
    title = (f"preset {report['preset']} ({report['backbone_type']} backbone), built on the {report['device']} "
             "device: no weights allocated or downloaded")
    lines = [title, "", f"{'component':<24} {'parameters':>15}"]
    lines += [f"{label:<24} {counts[key]:>15,}  ({counts[key] / 1e9:.2f} B)" for key, label in labels]
    lines += ["", "weights in memory (parameters only; activations, KV cache and optimizer state come on top)",
              f"{'dtype':<24} {'bytes/param':>15} {'memory':>10}"]
    for name, size in BYTES_PER_PARAMETER.items():
        label = "int8 (estimate)" if name == "int8" else name
        mark = "  <- --dtype" if report.get("dtype") == name else ""
        lines.append(f"{label:<24} {size:>15} {report['memory_bytes'][name] / 2**30:>6.1f} GiB{mark}")
    return "\n".join(lines)


@command("build", (BuildArguments,))
def build_command(args: BuildArguments) -> int:
    if args.dry_run:
        from ..assembly import dry_run

        if not args.preset:
            raise CommandError(f"--dry-run needs --preset (one of {_presets()}).")
        print(format_dry_run(dry_run(args.preset, dtype=args.dtype)))
        return 0
    if not args.backbone or not args.output_dir:
        raise CommandError("give --backbone (Hub id or directory) and --output-dir, or --preset P --dry-run.")
    from ..assembly import build_checkpoint

    output_dir = build_checkpoint(args.output_dir, backbone=args.backbone, sam=args.sam, sae=args.sae,
                                  preset=args.preset, num_slots=args.num_slots, dtype=args.dtype,
                                  max_shard_size=int(shard) if (shard := args.max_shard_size).isdigit() else shard,
                                  overwrite=args.overwrite)
    print(f"SegCompass checkpoint written to {output_dir}")
    print(f"which parts are pretrained and which heads are untrained: {output_dir / 'README.md'}")
    print(f"load it: import segcompass; AutoModel.from_pretrained({str(output_dir)!r}), or --model {output_dir}")
    return 0
