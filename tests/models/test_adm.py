"""The Flax port of NVlabs/edm's DhariwalUNet (`jaxdiff.models.adm`) against the real-format fixture
tests/fixtures/edm_adm/ (a tiny class-conditional EDMPrecond(DhariwalUNet) pickle with random
weights, the float32 outputs upstream PyTorch computed (NCHW), and one 4-head ADM UNetBlock)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.models import adm, edm
from jaxdiff.torch_reader import named_modules, read_edm_pickle, state_dict

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "edm_adm"
PKL = FIXTURES / "edm_adm_cond.pkl"
IO = FIXTURES / "edm_adm_cond_io.npz"
BLOCK_IO = FIXTURES / "edm_adm_block_io.npz"

# Measured on CPU (float32), max|ours - ref| / max|ref| over the batch: see the README table.
RTOL = 1e-5


def nhwc(a):
    return jnp.asarray(np.asarray(a).transpose(0, 2, 3, 1))


def nchw(a):
    return np.asarray(a).transpose(0, 3, 1, 2)


def rel_err(ours, ref):
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def with_weights(module, sd):
    """(graphdef, params) of `module` with the torch state dict `sd` (names relative to it)."""
    converted = edm.convert_state_dict(module, sd)   # one to one, or ValueError naming arrays
    graphdef, state = nnx.split(module)
    flat = [(p, v.replace(jnp.asarray(converted[tuple(str(q) for q in p)])))
            for p, v in nnx.to_flat_state(state)]
    return graphdef, nnx.from_flat_state(flat)


def unprefixed(sd):
    assert all(k.startswith("model.") for k in sd)
    return {k[len("model."):]: v for k, v in sd.items()}


@pytest.fixture(scope="module")
def snap():
    return read_edm_pickle(PKL)


@pytest.fixture(scope="module")
def net(snap):
    """(graphdef, params, jitted apply(params, x, c_noise, labels, aug)) of the fixture's UNet."""
    kw = dict(snap.ema.children["model"].init_kwargs)
    module = nnx.eval_shape(lambda: adm.DhariwalUNet(**kw))
    graphdef, params = with_weights(module, unprefixed(state_dict(snap.ema)))

    @jax.jit
    def apply(params, x, c_noise, labels=None, aug=None):
        return nnx.merge(graphdef, params)(x, c_noise, labels, aug)

    return graphdef, params, apply


@pytest.fixture(scope="module")
def io():
    return dict(np.load(IO))


def test_fixture_is_the_expected_network(snap):
    assert snap.ema.class_name == "EDMPrecond"
    assert snap.ema.init_kwargs["model_type"] == "DhariwalUNet"
    assert snap.ema.children["model"].class_name == "DhariwalUNet"
    sd = state_dict(snap.ema)
    assert len(sd) == 126
    assert sum(a.size for k, a in sd.items() if not k.endswith("resample_filter")) == 109_107


def test_state_dict_maps_one_to_one(snap):
    sd = unprefixed(state_dict(snap.ema))
    kw = dict(snap.ema.children["model"].init_kwargs)
    module = nnx.eval_shape(lambda: adm.DhariwalUNet(**kw))
    converted = edm.convert_state_dict(module, sd)        # raises on any mismatch
    paths = [edm.torch_to_flax(n, a)[0] for n, a in sd.items()]
    assert paths == [tuple(n.split(".")) for n in sd]      # the torch name is the Flax path
    assert set(paths) == set(edm._flat_state(module)) == set(converted)
    # ADM specifics: bias-free map_label [emb, label_dim] -> [label_dim, emb]; affine 2C wide;
    # a same-width down/up block's skip is a kernel-0 resampler (no weight); out_conv is the
    # output layer; no attention arrays anywhere (every block has < 64 channels)
    np.testing.assert_array_equal(converted[("map_label", "weight")], sd["map_label.weight"].T)
    assert "map_label.bias" not in sd and module.map_label.bias is None
    assert converted[("enc", "16x16_block0", "affine", "weight")].shape == (48, 24)
    for blk in ("enc.8x8_down", "dec.16x16_up"):
        assert [k for k in sd if k.startswith(blk + ".skip")] == [blk + ".skip.resample_filter"]
    np.testing.assert_array_equal(converted[("enc", "8x8_down", "skip", "resample_filter")],
                                  np.full((2, 2), 0.25, np.float32))
    assert converted[("out_conv", "weight")].shape == (3, 3, 12, 3)
    assert not [k for k in sd if ".qkv." in k or ".proj." in k or ".norm2." in k]
    missing = {k: v for k, v in sd.items() if k != "out_norm.bias"}
    with pytest.raises(ValueError, match="missing.*out_norm.bias"):
        edm.convert_state_dict(module, missing)


def test_recorded_layer_attributes_match_the_port(snap, net):
    """Every per-layer attribute the pickle records agrees with the rebuilt Flax module."""
    graphdef, params, _ = net
    model = nnx.merge(graphdef, params)
    checked = set()
    for name, rec in named_modules(snap.ema).items():
        if not name.startswith("model.") or rec.class_name in ("ModuleDict",):
            continue
        at = rec.attrs
        if rec.class_name == "PositionalEmbedding":
            assert (at["num_channels"], at["max_positions"], at["endpoint"]) == (12, 10000, False)
            continue
        obj = model
        for p in name.split(".")[1:]:
            obj = obj[p] if isinstance(obj, nnx.Dict) else getattr(obj, p)
        checked.add(rec.class_name)
        if rec.class_name == "UNetBlock":
            assert (at["in_channels"], at["out_channels"], at["num_heads"]) == \
                (obj.in_channels, obj.out_channels, obj.num_heads), name
            assert at["adaptive_scale"] is True and obj.adaptive_scale is True
            assert float(at["skip_scale"]) == obj.skip_scale == 1.0
        elif rec.class_name == "GroupNorm":
            assert (at["num_groups"], at["eps"]) == (obj.num_groups, obj.eps), name
        elif rec.class_name == "Conv2d":
            assert (bool(at["up"]), bool(at["down"])) == (obj.up, obj.down), name
        elif rec.class_name == "Linear":
            assert (at["in_features"], at["out_features"]) == \
                (obj.in_features, obj.out_features), name
    assert checked == {"UNetBlock", "GroupNorm", "Conv2d", "Linear"}


def test_raw_network_matches_pytorch(net, io):
    _, params, apply = net
    labels = jnp.asarray(io["class_labels"])
    x_in, c_noise = nhwc(io["model_in"]), jnp.asarray(io["c_noise"])
    f_x = nchw(apply(params, x_in, c_noise, labels))
    assert rel_err(f_x, io["F_x"]) <= RTOL
    for i in range(4):   # also per image (sigma 0.002 ... 80)
        assert rel_err(f_x[i], io["F_x"][i]) <= RTOL
    f_aug = nchw(apply(params, x_in, c_noise, labels, jnp.asarray(io["augment_labels"])))
    assert rel_err(f_aug, io["F_x_aug"]) <= RTOL
    assert rel_err(io["F_x_aug"], io["F_x"]) > 1e-2   # map_augment is really exercised
    other = nchw(apply(params, x_in, c_noise, jnp.roll(labels, 1, axis=1)))
    assert rel_err(other, io["F_x"]) > 1e-2           # and so is map_label


def test_preconditioned_output_matches_pytorch(net, io):
    """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise) with EDM's scalings reproduces `out`,
    and with no labels (EDMPrecond's zero row) `out_nolabels`."""
    _, params, apply = net
    c_skip, c_out, c_in, c_noise = (np.asarray(c)[:, None, None, None] for c in
                                    edm.edm_scalings(jnp.asarray(io["sigma"]), 0.5))
    np.testing.assert_allclose(c_in * io["x"], io["model_in"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(c_noise.ravel(), io["c_noise"], rtol=1e-6, atol=1e-7)
    for labels, key in ((jnp.asarray(io["class_labels"]), "out"), (None, "out_nolabels")):
        f_x = nchw(apply(params, nhwc(c_in * io["x"]), jnp.asarray(io["c_noise"]), labels))
        d = c_skip * io["x"] + c_out * f_x
        assert rel_err(d, io[key]) <= RTOL, key
        assert max(rel_err(d[i], io[key][i]) for i in range(4)) <= RTOL, key


def test_multi_head_adm_block_matches_pytorch():
    """One ADM UNetBlock (adaptive scale, skip_scale 1, eps 1e-5, 16 -> 32 channels) with 4
    heads of 8 channels: the head-major qkv layout and the per-head softmax (spec 4.6)."""
    blk_io = dict(np.load(BLOCK_IO))
    sd = {k[len("sd."):]: v for k, v in blk_io.items() if k.startswith("sd.")}
    module = nnx.eval_shape(lambda: edm.UNetBlock(
        16, 32, 64, attention=True, num_heads=4, eps=adm.ADM_EPS, skip_scale=1.0,
        resample_proj=False, adaptive_scale=True))
    graphdef, params = with_weights(module, sd)
    y = nnx.merge(graphdef, params)(nhwc(blk_io["x"]), jnp.asarray(blk_io["emb"]))
    assert rel_err(nchw(y), blk_io["y"]) <= RTOL
    # heads = out_channels // channels_per_head when num_heads is None (DhariwalUNet's rule)
    heads = [nnx.eval_shape(lambda c=c: edm.UNetBlock(c, c, 8, attention=True,
                                                      num_heads=None)).num_heads
             for c in (32, 64, 192)]
    assert heads == [0, 1, 3]


def test_bfloat16_compute_with_float32_parameters(net, io):
    """x in bfloat16: convolutions run in bfloat16 (the compiled program says so), parameters
    stay float32, and F_x stays within 2e-2 of the float32 upstream reference."""
    _, params, apply = net
    args = (params, nhwc(io["model_in"]).astype(jnp.bfloat16), jnp.asarray(io["c_noise"]),
            jnp.asarray(io["class_labels"]))
    low = apply(*args)
    assert low.dtype == jnp.bfloat16
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))
    # measured: F_x 1.5e-2 (per image 1.4e-2 to 2.1e-2), D(x) 1.2e-2; bfloat16 keeps 8 bits
    # of mantissa (relative step 4e-3)
    f_x = nchw(low.astype(jnp.float32))
    assert rel_err(f_x, io["F_x"]) < 2e-2
    c_skip, c_out, _, _ = (np.asarray(c)[:, None, None, None] for c in
                           edm.edm_scalings(jnp.asarray(io["sigma"]), 0.5))
    assert rel_err(c_skip * io["x"] + c_out * f_x, io["out"]) < 2e-2
    hlo = apply.lower(*args).as_text()
    assert "bf16" in hlo and "convolution" in hlo


def test_official_imagenet_configuration_has_the_official_sizes():
    """A shape-only build of edm-imagenet-64x64-cond-adm's DhariwalUNet (spec 2.3, 2.4): 553
    arrays, 295,899,267 parameters, and the spec's example shapes (torch layout transposed)."""
    module = nnx.eval_shape(lambda: adm.DhariwalUNet(
        64, 3, 3, label_dim=1000, model_channels=192, channel_mult=(1, 2, 3, 4)))
    flat = {".".join(p): v.get_value().shape for p, v in edm._flat_state(module).items()}
    assert len(flat) == 553
    assert sum(int(np.prod(s)) for k, s in flat.items()
               if not k.endswith("resample_filter")) == 295_899_267
    assert flat["map_layer0.weight"] == (192, 768)
    assert flat["map_label.weight"] == (1000, 768) and "map_label.bias" not in flat
    assert flat["enc.64x64_conv.weight"] == (3, 3, 3, 192)
    assert flat["enc.64x64_block0.affine.weight"] == (768, 384)
    assert flat["enc.32x32_down.skip.resample_filter"] == (2, 2)
    assert "enc.32x32_down.skip.weight" not in flat
    assert flat["enc.32x32_block0.qkv.weight"] == (1, 1, 384, 1152)
    assert flat["dec.8x8_in0.qkv.weight"] == (1, 1, 768, 2304)
    assert flat["out_conv.weight"] == (3, 3, 192, 3)
    assert module.enc["32x32_block0"].num_heads == 6 and module.dec["8x8_in0"].num_heads == 12
    assert module.enc["64x64_block0"].num_heads == 0   # 64 is not in attn_resolutions


def test_edm_load_and_import_reproduce_the_denoiser(io, tmp_path):
    """`edm.load(pickle)` dispatches model_type DhariwalUNet to this port and its D(x; sigma)
    matches upstream's `out`; `import_checkpoint` + `load(dir)` give the same parameters bit for
    bit. (F_x and the label-free D are checked on the port directly above.)"""
    denoise, meta = edm.load(PKL)
    assert meta["constructor"]["model_type"] == "DhariwalUNet"
    assert meta["precond"]["class_name"] == "EDMPrecond"
    assert isinstance(meta["net"].model, adm.DhariwalUNet)
    x, sigma = nhwc(io["x"]), jnp.asarray(io["sigma"])
    labels = jnp.asarray(io["class_labels"])
    assert rel_err(nchw(denoise(x, sigma, labels)), io["out"]) <= RTOL
    out_dir = edm.import_checkpoint(PKL, tmp_path / "adm")
    _, meta2 = edm.load(out_dir)
    assert meta2["constructor"] == meta["constructor"]
    for a, b in zip(jax.tree.leaves(meta2["params"]), jax.tree.leaves(meta["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
