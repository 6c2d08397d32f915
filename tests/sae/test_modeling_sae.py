"""SparseAutoencoder: shapes, activations, losses, sparse paths, save/load, Auto registration, bad input."""

import pytest
import torch
from transformers import AutoConfig, AutoModel

import segcompass
from segcompass import SparseAutoencoder, SparseAutoencoderConfig
from segcompass.testing import tiny_sae_config


def make_sae(**overrides) -> SparseAutoencoder:
    return SparseAutoencoder(tiny_sae_config(**overrides)).eval()


@pytest.mark.parametrize("activation,k", [("relu", None), ("topk", 5), ("jumprelu", None)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shapes_and_dtypes(activation, k, dtype):
    sae = make_sae(activation=activation, k=k).to(dtype)
    x = torch.randn(3, 7, 32, dtype=dtype)
    out = sae(x)
    assert out.feature_acts.shape == (3, 7, 128) and out.feature_acts.dtype == dtype
    assert out.reconstruction.shape == (3, 7, 32) and out.reconstruction.dtype == dtype
    assert (out.feature_acts >= 0).all()
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert sae.decode(sae.encode(x)).shape == x.shape


def test_topk_gives_exactly_k_actives():
    sae = make_sae(activation="topk", k=5)
    with torch.no_grad():
        sae.b_enc.fill_(10.0)  # every pre-activation positive, so ReLU never removes a kept entry
    acts = sae.encode(torch.randn(4, 9, 32))
    assert ((acts != 0).sum(-1) == 5).all()


def test_jumprelu_threshold_gates_per_feature():
    sae = make_sae(activation="jumprelu")
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_enc.copy_(torch.linspace(-1, 1, 128))
        sae.threshold.fill_(0.5)
    acts = sae.encode(torch.zeros(1, 32))[0]
    pre = torch.linspace(-1, 1, 128)
    torch.testing.assert_close(acts, torch.where(pre > 0.5, pre, torch.zeros(())))


def test_hand_computed_loss_on_2x4_example():
    config = SparseAutoencoderConfig(d_in=4, d_sae=2, l1_coefficient=0.5)
    sae = SparseAutoencoder(config)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, -1.0]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]))
        sae.b_dec.zero_()
    x = torch.tensor([[2.0, 3.0, 1.0, 0.0], [-1.0, 0.5, 0.0, 2.0]])
    out = sae(x)
    # token 0: pre = (2, 2) -> h = (2, 2); x_hat = (2, 2, 0, 0); err = (0, 1, 1, 0) -> 2; |h|_1 = 4; l0 = 2
    # token 1: pre = (-1, -0.5) -> h = (0, 0); x_hat = 0; err = 1 + 0.25 + 0 + 4 = 5.25; |h|_1 = 0; l0 = 0
    torch.testing.assert_close(out.feature_acts, torch.tensor([[2.0, 2.0], [0.0, 0.0]]))
    assert out.mse_loss.item() == pytest.approx((2.0 + 5.25) / 2)
    assert out.l1_loss.item() == pytest.approx(2.0)
    assert out.l0.item() == pytest.approx(1.0)
    assert out.loss.item() == pytest.approx(3.625 + 0.5 * 2.0)
    masked = sae(x, attention_mask=torch.tensor([1, 0]))
    assert masked.mse_loss.item() == pytest.approx(2.0) and masked.l1_loss.item() == pytest.approx(4.0)


@pytest.mark.parametrize("activation,k", [("relu", None), ("topk", 6), ("jumprelu", None)])
def test_encode_sparse_equals_dense_reference(activation, k):
    sae = make_sae(activation=activation, k=k)
    x = torch.randn(2, 11, 32)
    sparse = sae.encode_sparse(x, threshold=0.3, chunk_size=4)
    dense = sae.encode(x)
    reference = torch.where(dense.abs() >= 0.3, dense, torch.zeros(()))
    assert len(sparse) == 22 and sparse.shape == (2, 11, 128)
    torch.testing.assert_close(sparse.to_dense(), reference)
    idx, val = sparse.token(13)  # sample 1, token 2
    expected_idx = reference[1, 2].nonzero().squeeze(-1)
    assert torch.equal(idx, expected_idx)
    torch.testing.assert_close(val, reference[1, 2, expected_idx])


@pytest.mark.parametrize("pooling", ["max", "mean", "sum"])
@pytest.mark.parametrize("activation,k", [("relu", None), ("topk", 6), ("jumprelu", None)])
def test_pooled_concepts_equal_dense_reference(pooling, activation, k):
    sae = make_sae(activation=activation, k=k)
    x = torch.randn(3, 10, 32)
    mask = torch.ones(3, 10)
    mask[0, 6:] = 0
    mask[2, 2:] = 0
    out = sae.pooled_concepts(x, mask, threshold=0.2, top_n=8, pooling=pooling, chunk_size=3)
    dense = sae.encode(x)
    dense = torch.where(dense.abs() >= 0.2, dense, torch.zeros(())) * mask[..., None]  # (B, T, d_sae)
    if pooling == "max":
        pooled = dense.amax(1)
    elif pooling == "sum":
        pooled = dense.sum(1)
    else:
        pooled = dense.sum(1) / mask.sum(1, keepdim=True)
    ref_values, ref_indices = pooled.topk(8, dim=-1)
    for b in range(3):
        valid = ref_values[b] > 0
        assert torch.equal(out.mask[b], valid)
        assert set(out.indices[b][valid].tolist()) == set(ref_indices[b][valid].tolist())
        torch.testing.assert_close(out.values[b][valid], ref_values[b][valid], rtol=1e-5, atol=1e-5)
        assert (out.values[b][~valid] == 0).all()
    torch.testing.assert_close(out.pooled, pooled)  # the ranking (and any baseline) sees what is returned
    assert torch.equal(out.active, out.token_activations != 0)
    # token provenance: the per-token activations of each kept feature
    torch.testing.assert_close(
        out.token_activations, torch.gather(dense, 2, out.indices[:, None, :].expand(-1, 10, -1)) * out.mask[:, None, :]
    )


@pytest.mark.parametrize("pooling", ["max", "sum"])
def test_topk_ties_at_the_cut_off_are_decided_once(pooling):
    """Integer weights and inputs make every pre-activation exact, so ties at TopK's k-th value are real ties
    whatever the kernel; every path must keep the same features (lower index wins) with the same values."""
    sae = make_sae(activation="topk", k=3)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randint(-1, 2, (32, 128), generator=generator).float())
        sae.W_enc[:, 40:48] = sae.W_enc[:, 8:9]  # features 8 and 40..47 always tie
        sae.b_enc.zero_()
    x = torch.randint(-2, 3, (2, 9, 32), generator=generator).float()
    dense = sae.encode(x)  # (2, 9, 128)
    pre = x @ sae.W_enc
    assert ((dense != 0).sum(-1) <= 3).all()
    tied_tokens = 0
    for b, t in ((b, t) for b in range(2) for t in range(9)):
        kth = pre[b, t].topk(3).values[-1]
        ties = (pre[b, t] == kth).nonzero().flatten()
        if kth > 0 and len(ties) > 1 and (pre[b, t] > kth).sum() + len(ties) > 3:
            tied_tokens += 1
            room = 3 - int((pre[b, t] > kth).sum())
            assert torch.equal((dense[b, t, ties] != 0).nonzero().flatten(), torch.arange(room))  # lowest first
    assert tied_tokens > 0  # the construction really produces ties at the cut-off
    sparse = sae.encode_sparse(x, chunk_size=4)
    assert torch.equal(sparse.to_dense(), dense)
    out = sae.pooled_concepts(x, top_n=128, pooling=pooling, chunk_size=2)
    reference = dense.amax(1) if pooling == "max" else dense.sum(1)  # (2, 128)
    for b in range(2):
        kept = out.indices[b][out.mask[b]]
        assert set(kept.tolist()) == set(reference[b].nonzero().flatten().tolist())
        torch.testing.assert_close(out.values[b][out.mask[b]], reference[b][kept], rtol=0, atol=0)
    torch.testing.assert_close(
        out.token_activations, torch.gather(dense, 2, out.indices[:, None, :].expand(-1, 9, -1)) * out.mask[:, None, :],
        rtol=0, atol=0,
    )


@pytest.mark.parametrize("little_endian", [True, False])
@pytest.mark.parametrize("columns", [128, 13])
def test_gate_bits_round_trip(little_endian, columns):
    """The selection keeps its gate as 1 bit per (token, feature); reading kept columns back is exact."""
    from segcompass.sae.modeling_sae import _pack_bits, _unpack_columns

    member = torch.rand(7, columns, generator=torch.Generator().manual_seed(0)) > 0.5
    member[0] = True  # every bit of a byte set (the int64 product's sign bit)
    packed = _pack_bits(member, little_endian=little_endian)
    assert packed.shape == (7, (columns + 7) // 8) and packed.dtype == torch.uint8
    wanted = torch.tensor([columns - 1, 0, 7, 8, 3, 3, columns // 2])
    assert torch.equal(_unpack_columns(packed, wanted), member[:, wanted])


@pytest.mark.parametrize("pooling", ["max", "sum"])
@pytest.mark.parametrize("chunk_size", [None, 1, 4])
def test_pooled_concepts_masks_with_holes_and_negative_jump_thresholds(pooling, chunk_size):
    """Valid tokens scattered through the sequence (holes, different per sample), chunks that do not divide them,
    and JumpReLU thresholds below 0 (gate open at negative pre-activations: the general pooling path)."""
    sae = make_sae(activation="jumprelu")
    with torch.no_grad():
        sae.threshold.copy_(torch.linspace(-0.5, 0.5, 128))
    x = torch.randn(3, 11, 32, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 11)
    mask[0, ::3] = 0
    mask[1, 4:7] = 0
    mask[2, :] = 0
    mask[2, 5] = 1
    out = sae.pooled_concepts(x, mask, threshold=0.0, top_n=16, pooling=pooling, chunk_size=chunk_size)
    dense = sae.encode(x)  # (3, 11, 128)
    member = (dense != 0) & mask.bool()[..., None]
    codes = torch.where(member, dense, torch.zeros(()))
    pooled = codes.amax(1) if pooling == "max" else codes.sum(1)  # (3, 128)
    torch.testing.assert_close(out.pooled, pooled)
    for b in range(3):
        kept = out.indices[b][out.mask[b]]
        assert torch.equal(out.mask[b].sum(), (pooled[b] > 0).sum().clamp_max(16))
        assert (pooled[b, kept] > 0).all()
    expected_gate = torch.gather(member, 2, out.indices[:, None, :].expand(-1, 11, -1)) & out.mask[:, None, :]
    assert torch.equal(out.active, expected_gate)
    assert not out.active[~mask.bool()].any()
    torch.testing.assert_close(out.values, torch.gather(pooled, 1, out.indices) * out.mask)


@pytest.mark.parametrize("pooling", ["max", "mean"])
@pytest.mark.parametrize("activation", ["relu", "jumprelu"])
def test_pooled_concepts_feature_tiles_equal_whole_rows(monkeypatch, pooling, activation):
    """Under a per-feature gate the selection tiles the features too (64 MiB tiles at real sizes); shrunk here to
    16-feature tiles of 4 tokens, with a ragged last tile (d_sae = 124), the result equals whole rows."""
    from segcompass.sae import modeling_sae

    sae = make_sae(activation=activation, d_sae=124)
    if activation == "jumprelu":
        with torch.no_grad():
            sae.threshold.copy_(torch.linspace(-0.2, 0.4, 124))  # per-feature, some below 0
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 9)
    mask[1, 2:5] = 0
    whole = sae.pooled_concepts(x, mask, threshold=0.1, top_n=12, pooling=pooling)
    seen = []
    original = sae._membership

    def spy(pre, threshold=0.0, features=None):
        seen.append(pre.shape[-1])
        return original(pre, threshold, features=features)

    monkeypatch.setattr(sae, "_membership", spy)
    monkeypatch.setattr(modeling_sae, "_CHUNK_ELEMENTS", 64)
    tiled = sae.pooled_concepts(x, mask, threshold=0.1, top_n=12, pooling=pooling, chunk_size=4)
    assert set(seen) - {124} == {16, 12}  # tiles of 16 features, the last one 12 (124 = the pooled maxima)
    assert torch.equal(tiled.indices, whole.indices) and torch.equal(tiled.mask, whole.mask)
    assert torch.equal(tiled.active, whole.active)
    torch.testing.assert_close(tiled.pooled, whole.pooled)
    torch.testing.assert_close(tiled.values, whole.values)


def test_pooled_concepts_baseline_reorders_the_ranking_only():
    sae = make_sae()
    x = torch.randn(2, 6, 32)
    plain = sae.pooled_concepts(x, top_n=4)
    baseline = torch.zeros(128)
    baseline[plain.indices[:, 0]] = 1e6  # the strongest feature of each sample is "always on"
    shifted = sae.pooled_concepts(x, top_n=4, baseline=baseline)
    for b in range(2):
        assert int(plain.indices[b, 0]) not in shifted.indices[b].tolist()
    dense = sae.encode(x).amax(1)
    torch.testing.assert_close(shifted.values, torch.gather(dense, 1, shifted.indices))  # values unshifted
    with pytest.raises(ValueError, match="baseline"):
        sae.pooled_concepts(x, baseline=torch.zeros(3))


def test_pooled_concepts_of_empty_sequences():
    sae = make_sae()
    out = sae.pooled_concepts(torch.randn(2, 0, 32), top_n=4)
    assert out.indices.shape == (2, 4) and not out.mask.any() and out.token_activations.shape == (2, 0, 4)
    masked = sae.pooled_concepts(torch.randn(1, 3, 32), torch.zeros(1, 3), top_n=4)
    assert not masked.mask.any() and (masked.values == 0).all()


def test_pooled_concepts_fewer_active_than_top_n_and_gradients():
    sae = make_sae()
    x = torch.randn(2, 5, 32, requires_grad=True)
    out = sae.pooled_concepts(x, threshold=0.0, top_n=128)
    n_active = (sae.encode(x).amax(1) > 0).sum(-1)
    assert torch.equal(out.mask.sum(-1), n_active)
    out.values.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_pooled_concepts_never_materialises_full_dense_codes(monkeypatch):
    sae = make_sae()
    seen = []
    original = sae._membership

    def spy(pre, threshold=0.0):
        seen.append(pre.shape)
        return original(pre, threshold)

    monkeypatch.setattr(sae, "_membership", spy)
    sae.pooled_concepts(torch.randn(1, 40, 32), chunk_size=8)
    assert seen and max(s[1] for s in seen) <= 8


def test_save_load_roundtrip_and_automodel(tmp_path):
    sae = make_sae(activation="topk", k=4, hook_layer=3)
    sae.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, SparseAutoencoderConfig) and config.hook_layer == 3 and config.k == 4
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, SparseAutoencoder)
    x = torch.randn(2, 3, 32)
    assert torch.equal(sae(x).feature_acts, loaded(x).feature_acts)
    assert torch.equal(sae(x).reconstruction, loaded(x).reconstruction)


def test_decoder_normalisation_helpers():
    sae = make_sae()
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.normalize_decoder_()
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(128))
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.remove_decoder_parallel_grad_()
    assert (sae.W_dec.grad * sae.W_dec).sum(-1).abs().max() < 1e-5


def test_public_names():
    assert segcompass.SparseAutoencoder is SparseAutoencoder
    assert segcompass.SparseAutoencoderConfig is SparseAutoencoderConfig


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(activation="gelu"), "Unknown SAE `activation` 'gelu'"),
        (dict(activation="topk", k=None), "needs `k`"),
        (dict(activation="topk", k=500), "k=500"),
        (dict(d_in=0), "d_in"),
        (dict(hook_layer=-1), "hook_layer"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_sae_config(**kwargs)


def test_wrong_d_in_and_non_finite_inputs():
    sae = make_sae()
    with pytest.raises(ValueError, match=r"d_in=32, got shape \(2, 16\)"):
        sae.encode(torch.randn(2, 16))
    bad = torch.randn(2, 32)
    bad[0, 1] = float("nan")
    bad[1, 2] = float("inf")
    with pytest.raises(ValueError, match="2 NaN/inf"):
        sae(bad)
    with pytest.raises(ValueError, match="d_sae=128"):
        sae.decode(torch.randn(2, 5))
    with pytest.raises(ValueError, match="pooling"):
        sae.pooled_concepts(torch.randn(1, 2, 32), pooling="median")
    with pytest.raises(ValueError, match="threshold"):
        sae.encode_sparse(torch.randn(2, 32), threshold=-1.0)
