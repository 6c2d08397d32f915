"""segcompass build: a SegCompass checkpoint assembled from parts in their real on-disk layouts (stock Qwen2.5-VL /
LLaVA directories, a transformers SAM directory or an original .pth, an SAE in our format or SAELens), the dry run on
the meta device, and the fail-fast model-name resolver."""

from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    AutoModel,
    AutoProcessor,
    CLIPImageProcessorPil,
    LlavaForConditionalGeneration,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    SamModel,
    pipeline,
)

import segcompass.presets
from segcompass.assembly import build_checkpoint, dry_run, empty_model
from segcompass.commands import main
from segcompass.commands.build import build_command
from segcompass.configuration_segcompass import SegCompassConfig
from segcompass.convert.sam import sam_state_dict_for_mask_path
from segcompass.from_scratch import build_llava_style_tokenizer, build_qwen_style_tokenizer
from segcompass.presets import HUB_TIMEOUT_S, resolve_checkpoint
from segcompass.sae import SparseAutoencoder, SparseAutoencoderConfig
from segcompass.testing import segment_anything_modeling

IMAGE = Path(__file__).resolve().parents[1] / "examples" / "images" / "scene.png"
TOKENS = ["<REF_POS>", "<SLOT_0>", "<SLOT_1>", "<SLOT_2>"]  # the tiny preset: 3 slots


# ------------------------------------------------------------------------------------------------ stand-ins
def _perturbed(module, seed):
    """Move every weight off its init, so a part that was not copied shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return module


def _write_qwen(directory, spare_rows=0):
    """A stock-style Qwen2.5-VL directory (model, tokenizer, image processor) without the SegCompass tokens."""
    tokenizer = build_qwen_style_tokenizer()
    config = SegCompassConfig.from_preset("tiny").backbone_config
    text = config.get_text_config()
    text.vocab_size = len(tokenizer) + spare_rows
    text.pad_token_id, text.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    token_id = tokenizer.convert_tokens_to_ids
    config.image_token_id = config.video_token_id = token_id("<|image_pad|>")
    config.vision_start_token_id, config.vision_end_token_id = token_id("<|vision_start|>"), token_id("<|vision_end|>")
    torch.manual_seed(3)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=56 * 56 * 4, patch_size=14,
                             merge_size=2).save_pretrained(directory)
    return directory


def _write_llava(directory):
    tokenizer = build_llava_style_tokenizer()
    config = SegCompassConfig.from_preset("tiny-llava").backbone_config
    config.get_text_config().vocab_size = len(tokenizer)
    config.image_token_index = tokenizer.convert_tokens_to_ids("<image>")
    torch.manual_seed(3)
    LlavaForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def _write_original_sam(path):
    """A tiny original segment-anything Sam saved as .pth (the tiny preset's SAM shape); None without the package."""
    modeling = segment_anything_modeling()
    if modeling is None:
        return None
    torch.manual_seed(2)
    original = modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(
            img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, out_chans=32,
            use_rel_pos=True, window_size=4, global_attn_indexes=(1,)),
        prompt_encoder=modeling.PromptEncoder(embed_dim=32, image_embedding_size=(8, 8), input_image_size=(64, 64),
                                              mask_in_chans=8),
        mask_decoder=modeling.MaskDecoder(
            transformer_dim=32, iou_head_hidden_dim=32,
            transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=2)),
    ).eval()
    torch.save(_perturbed(original, 6).state_dict(), path)
    return original


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    sam = _perturbed(SamModel(SegCompassConfig.from_preset("tiny").sam_config), 4)
    sam.save_pretrained(root / "sam-vit-tiny")
    sae = _perturbed(SparseAutoencoder(SparseAutoencoderConfig(d_in=64, d_sae=256, hook_layer=1)), 5)
    sae.save_pretrained(root / "sae")
    sae.save_saelens(root / "sae-saelens")
    return {
        "qwen": _write_qwen(root / "qwen"), "qwen_spare": _write_qwen(root / "qwen-spare", spare_rows=20),
        "llava": _write_llava(root / "llava"), "sam": sam, "sam_dir": root / "sam-vit-tiny", "sae": sae,
        "sae_dir": root / "sae", "saelens_dir": root / "sae-saelens", "pth": root / "sam_vit_tiny.pth",
        "original_sam": _write_original_sam(root / "sam_vit_tiny.pth"),
    }


def _same(a: dict, b: dict, keys=None):
    for key in keys or b:
        assert torch.equal(a[key], b[key]), key


def _segments(directory):
    pipe = pipeline("reasoning-segmentation", model=str(directory))
    return pipe(Image.open(IMAGE), "the red circle", max_new_tokens=3)


# ------------------------------------------------------------------------------------------------ build
def test_build_from_sam_dir_and_our_sae_round_trips(parts, tmp_path):
    out = build_checkpoint(tmp_path / "segcompass-tiny", backbone=str(parts["qwen"]), sam=str(parts["sam_dir"]),
                           sae=str(parts["sae_dir"]), preset="tiny")
    assert out == tmp_path / "segcompass-tiny" and sorted(p.name for p in tmp_path.iterdir()) == ["segcompass-tiny"]
    model, processor = AutoModel.from_pretrained(out), AutoProcessor.from_pretrained(out)
    backbone = Qwen2_5_VLForConditionalGeneration.from_pretrained(parts["qwen"])

    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids(TOKENS)
    assert all(token in tokenizer.added_tokens_encoder for token in TOKENS)
    assert (model.config.ref_token_id, model.config.slot_token_ids) == (ids[0], ids[1:])
    rows = backbone.get_input_embeddings().weight.shape[0]
    assert rows < len(tokenizer) == model.get_input_embeddings().weight.shape[0]  # grown: it had no spare rows
    ours, theirs = model.backbone.state_dict(), backbone.state_dict()
    embedding = "model.language_model.embed_tokens.weight"
    assert torch.equal(ours[embedding][:rows], theirs[embedding])
    _same(ours, theirs, [k for k in theirs if k not in (embedding, "lm_head.weight")])
    _same(model.sae.state_dict(), parts["sae"].state_dict())
    sam = parts["sam"].state_dict()
    _same(model.vision_encoder.state_dict(), {k: v for k, v in sam.items() if k.startswith("vision_encoder.")})
    _same(model.mask_decoder.state_dict(), sam_state_dict_for_mask_path(sam))

    card = (out / "README.md").read_text()
    assert str(parts["qwen"]) in card and str(parts["sam_dir"].resolve()) in card and str(parts["sae_dir"]) in card
    for head in ("concept_interface", "slot_mapper", "special-token embeddings"):
        assert f"| `{head}` |" in card and "**untrained**" in card.split(f"| `{head}` |")[1].split("\n")[0], head
    result = _segments(out)
    assert result["mask"].shape == Image.open(IMAGE).size[::-1] and "instances" in result


def test_build_from_original_pth_and_saelens(parts, tmp_path):
    original = parts["original_sam"] or pytest.skip("segment-anything is not installed (pip install .[test])")
    out = build_checkpoint(tmp_path / "out", backbone=str(parts["qwen_spare"]), sam=str(parts["pth"]),
                           sae=str(parts["saelens_dir"]), preset="tiny", dtype="float32")
    model = AutoModel.from_pretrained(out).eval()
    backbone = Qwen2_5_VLForConditionalGeneration.from_pretrained(parts["qwen_spare"])
    _same(model.backbone.state_dict(), backbone.state_dict())  # spare rows: the matrix is not touched
    assert len(AutoProcessor.from_pretrained(out).tokenizer) <= backbone.get_input_embeddings().weight.shape[0]
    _same(model.sae.state_dict(), parts["sae"].state_dict())
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.get_image_embeddings(pixels), original.image_encoder(pixels),
                                   atol=1e-4, rtol=1e-4)
    card = (out / "README.md").read_text()
    assert str(parts["pth"]) in card and "spare rows" in card


def test_build_without_sam_or_sae_says_so_and_llava_works(parts, tmp_path):
    out = build_checkpoint(tmp_path / "out", backbone=str(parts["llava"]), preset="tiny-llava", num_slots=2,
                           dtype="bfloat16")
    model = AutoModel.from_pretrained(out)
    assert model.dtype == torch.bfloat16 and model.config.num_slots == 2
    assert model.config.sae_config.d_sae == SegCompassConfig.from_preset("tiny-llava").sae_config.d_sae
    card = (out / "README.md").read_text()
    for part in ("sae", "vision_encoder", "mask_decoder", "concept_interface", "slot_mapper"):
        assert "**untrained**" in card.split(f"| `{part}` |")[1].split("\n")[0], part
    assert "a fresh SAE" in card
    assert _segments(out)["mask"].ndim == 2


def test_build_refuses_bad_input_before_loading(parts, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty.*overwrite"):
        build_checkpoint(taken, backbone=str(parts["qwen"]), preset="tiny")
    with pytest.raises(ValueError, match="backbone: model path .* does not exist"):
        build_checkpoint(tmp_path / "a", backbone=str(tmp_path / "no-backbone"))
    with pytest.raises(ValueError, match="dtype 'int8'"):
        build_checkpoint(tmp_path / "a", backbone=str(parts["qwen"]), dtype="int8")
    with pytest.raises(ValueError, match="preset 'tiny-llava' is for a llava backbone"):
        build_checkpoint(tmp_path / "a", backbone=str(parts["qwen"]), preset="tiny-llava")
    with pytest.raises(ValueError, match="SAM checkpoint .* does not exist"):
        build_checkpoint(tmp_path / "a", backbone=str(parts["qwen"]), sam=str(tmp_path / "sam_vit_h.pth"),
                         preset="tiny")
    assert not (tmp_path / "a").exists() and (taken / "keep.txt").read_text() == "mine"
    build_checkpoint(taken, backbone=str(parts["qwen"]), preset="tiny", overwrite=True)
    assert not (taken / "keep.txt").exists() and (taken / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no temporary directory left behind


# ------------------------------------------------------------------------------------------------ dry run
def test_dry_run_reports_the_real_qwen_sizes_on_the_meta_device():
    model = empty_model("qwen2.5-vl-7b")
    assert all(p.is_meta for p in model.parameters()) and all(b.is_meta for b in model.buffers())
    report = dry_run("qwen2.5-vl-7b", dtype="bfloat16")
    counts = report["parameters"]
    assert report["device"] == "meta" and 8.0e9 < counts["backbone"] < 8.5e9  # Qwen2.5-VL-7B: 8.29 B
    assert 0.6e9 < counts["vision_tower"] < 0.7e9 and 0.6e9 < counts["sam_encoder"] < 0.7e9  # 675 M, ViT-H 637 M
    assert counts["sae"] == 2 * 3584 * 65536 + 65536 + 3584
    parts = ("backbone", "sae", "concept_interface", "slot_mapper", "sam_encoder", "mask_decoder")
    assert counts["total"] == sum(counts[k] for k in parts)
    assert report["memory_bytes"] == {"fp32": 4 * counts["total"], "bf16": 2 * counts["total"],
                                      "fp16": 2 * counts["total"], "int8": counts["total"]}
    assert report["dtype"] == "bf16" and report["dtype_memory_bytes"] == 2 * counts["total"]
    with pytest.raises(ValueError, match="Unknown preset"):
        dry_run("qwen-72b")


# ------------------------------------------------------------------------------------------------ resolver
def test_resolver_local_paths(parts, tmp_path):
    assert resolve_checkpoint(parts["qwen"]) == str(parts["qwen"].resolve())
    with pytest.raises(ValueError, match="does not exist"):
        resolve_checkpoint(tmp_path / "missing")
    with pytest.raises(ValueError, match="has no config.json"):
        resolve_checkpoint(tmp_path)


def test_resolver_unpublished_names_fail_at_once_with_the_build_command(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "model_info", lambda *a, **k: pytest.fail("the Hub was asked"))
    with pytest.raises(ValueError) as error:
        resolve_checkpoint("segcompass-qwen7b")
    message = str(error.value)
    assert "not a published checkpoint" in message and "--output-dir ./segcompass-qwen7b" in message
    assert ("segcompass build --preset qwen2.5-vl-7b --backbone Qwen/Qwen2.5-VL-7B-Instruct "
            "--sam sam_vit_h_4b8939.pth --sae SAE_DIR") in message
    with pytest.raises(ValueError, match="--preset llava-1.5-13b --backbone llava-hf/llava-1.5-13b-hf"):
        resolve_checkpoint("segcompass-llava-1.5-13b")
    monkeypatch.setattr(segcompass.presets, "default_model_path", lambda: "/embedded")
    assert resolve_checkpoint("segcompass-tiny-synthetic") == "/embedded"


def test_resolver_hub_ids_never_wait(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "model_info", lambda *a, **k: pytest.fail("the Hub was asked"))
    with pytest.raises(ValueError, match="not in the local Hugging Face cache.*HF_HUB_OFFLINE"):
        resolve_checkpoint("some-org/some-model", cache_dir=tmp_path)
    snapshot = tmp_path / "models--some-org--some-model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--some-org--some-model" / "refs").mkdir()
    (tmp_path / "models--some-org--some-model" / "refs" / "main").write_text("abc123")
    assert resolve_checkpoint("some-org/some-model", cache_dir=tmp_path) == str(snapshot)

    # online: one model_info request with the short timeout; a failure is a ValueError, not a retry loop
    monkeypatch.setattr(segcompass.presets, "_offline", lambda: False)
    calls = []

    def unreachable(repo_id, timeout=None, **kwargs):
        calls.append(timeout)
        raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    with pytest.raises(ValueError, match="cannot be reached within 3 s"):
        resolve_checkpoint("other-org/other-model", cache_dir=tmp_path)
    assert calls == [HUB_TIMEOUT_S]
    assert resolve_checkpoint("some-org/some-model", cache_dir=tmp_path) == str(snapshot)  # cached copy instead
    monkeypatch.setattr(huggingface_hub, "model_info", lambda repo_id, timeout=None: object())
    assert resolve_checkpoint("other-org/other-model", cache_dir=tmp_path) == "other-org/other-model"


# ------------------------------------------------------------------------------------------------ command line
def test_build_command(parts, tmp_path, capsys):
    (args,) = build_command.parse(["--preset", "tiny", "--backbone", "b", "--sam", "s.pth", "--output-dir", "o",
                                   "--num-slots", "2", "--dtype", "bfloat16", "--overwrite"])
    assert (args.preset, args.backbone, args.sam, args.sae, args.output_dir, args.num_slots, args.dtype,
            args.overwrite, args.dry_run) == ("tiny", "b", "s.pth", None, "o", 2, "bfloat16", True, False)
    out = tmp_path / "built"
    assert main(["build", "--preset", "tiny", "--backbone", str(parts["qwen"]), "--sam", str(parts["sam_dir"]),
                 "--sae", str(parts["saelens_dir"]), "--output-dir", str(out)]) == 0
    assert f"written to {out}" in capsys.readouterr().out and (out / "model.safetensors").is_file()

    assert main(["build", "--preset", "qwen2.5-vl-7b", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "8,292,166,656" in printed and "meta device" in printed and "int8 (estimate)" in printed
    for argv, message in ((["build", "--dry-run"], "--dry-run needs --preset"),
                          (["build", "--preset", "tiny"], "give --backbone"),
                          (["build", "--backbone", str(parts["qwen"]), "--output-dir", str(out)], "not empty")):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2 and message in capsys.readouterr().err


def test_model_option_fails_fast_on_unpublished_names(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["segment", str(IMAGE), "a", "--model", "segcompass-qwen7b"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and "segcompass build --preset qwen2.5-vl-7b" in err
