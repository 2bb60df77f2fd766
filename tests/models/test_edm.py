"""The Flax port of NVlabs/edm's SongUNet + preconditioners (`jaxdiff.models.edm`) against
real-format fixtures: shared/fixtures/edm/ (a tiny class-conditional DDPM++ net under EDMPrecond)
and tests/fixtures/edm_ncsn/ (NCSN++ under VEPrecond, DDPM++ under VPPrecond, a 'skip'
encoder/decoder SongUNet under iDDPMPrecond), each with random weights and the outputs upstream
PyTorch computed in float32, NCHW."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.errors import UserError
from jaxdiff.models import edm
from jaxdiff.torch_reader import named_modules, read_edm_pickle, state_dict

# shared/ sits next to the checkout (as in tests/test_torch_reader.py) or inside it
_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = next((d for d in (_ROOT.parent / "shared" / "fixtures" / "edm",
                             _ROOT / "shared" / "fixtures" / "edm") if d.is_dir()),
                _ROOT.parent / "shared" / "fixtures" / "edm")
PKL = FIXTURES / "edm_ddpmpp_cond.pkl"
IO = FIXTURES / "edm_ddpmpp_cond_io.npz"

pytestmark = pytest.mark.skipif(not PKL.is_file(), reason=f"EDM fixture not found at {FIXTURES}")

# Measured on CPU (float32): out <= 6.3e-7 and F_x <= 8.8e-7 per image (max|ours - ref| /
# max|ref|); the README expects ~1e-5 from a correct float32 port. The tolerance leaves room for
# other backends (matmul/conv precision is forced to HIGHEST inside the port).
RTOL = 1e-4


def nhwc(a):
    return jnp.asarray(np.asarray(a).transpose(0, 2, 3, 1))


def nchw(a):
    return np.asarray(a).transpose(0, 3, 1, 2)


def rel_err_per_image(ours, ref):
    return [float(np.abs(ours[i] - ref[i]).max() / np.abs(ref[i]).max())
            for i in range(ref.shape[0])]


@pytest.fixture(scope="module")
def loaded():
    denoise, meta = edm.from_edm_pickle(PKL)
    return denoise, meta, dict(np.load(IO))


def test_meta(loaded):
    _, meta, _ = loaded
    assert meta["precond"] == dict(class_name="EDMPrecond", sigma_data=0.5, sigma_min=0.0,
                                   sigma_max=float("inf"))
    assert meta["constructor"]["model_type"] == "SongUNet"
    assert meta["constructor"]["channel_mult"] == [1, 2]
    assert meta["constructor"]["sigma_data"] == 0.5 and meta["source"] == str(PKL)
    n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(meta["params"]))
    assert n == 189_667 + 4 * 4  # parameters + four [2, 2] resample_filter buffers


def test_preconditioner_inputs(loaded):
    _, _, io = loaded
    c_skip, c_out, c_in, c_noise = edm.edm_scalings(jnp.asarray(io["sigma"]), 0.5)
    np.testing.assert_allclose(np.asarray(c_noise), io["c_noise"], rtol=1e-6, atol=1e-7)
    model_in = np.asarray(c_in)[:, None, None, None] * io["x"]
    np.testing.assert_allclose(model_in, io["model_in"], rtol=1e-6, atol=1e-7)
    # out = c_skip x + c_out F_x holds for the recorded arrays with our scalings
    recon = (np.asarray(c_skip)[:, None, None, None] * io["x"]
             + np.asarray(c_out)[:, None, None, None] * io["F_x"])
    assert max(rel_err_per_image(recon, io["out"])) < 1e-5


def test_matches_pytorch_reference(loaded):
    denoise, meta, io = loaded
    labels = jnp.asarray(io["class_labels"])
    out = nchw(denoise(nhwc(io["x"]), jnp.asarray(io["sigma"]), labels))
    f_x = nchw(meta["apply_raw"](meta["params"], nhwc(io["model_in"]),
                                 jnp.asarray(io["c_noise"]), labels))
    err_out = rel_err_per_image(out, io["out"])
    err_f = rel_err_per_image(f_x, io["F_x"])
    assert max(err_out) <= RTOL, err_out
    assert max(err_f) <= RTOL, err_f
    # whole-batch measure, as in the README
    assert np.abs(f_x - io["F_x"]).max() / np.abs(io["F_x"]).max() <= RTOL
    # the labels matter (so map_label is really wired in): a different class changes F_x
    other = nchw(meta["apply_raw"](meta["params"], nhwc(io["model_in"]),
                                   jnp.asarray(io["c_noise"]), jnp.roll(labels, 1, axis=1)))
    assert max(rel_err_per_image(other, io["F_x"])) > 1e-2


def test_state_dict_maps_one_to_one():
    snap = read_edm_pickle(PKL)
    sd = state_dict(snap.ema)
    assert len(sd) == 149
    abstract = edm.build_from_record(snap.ema)
    flat = edm._flat_state(abstract)
    converted = edm.convert_state_dict(abstract, sd)  # raises on any mismatch
    # every torch array used exactly once, every Flax variable filled exactly once
    paths = [edm.torch_to_flax(n, a)[0] for n, a in sd.items()]
    assert len(set(paths)) == len(paths) == len(sd)
    assert set(paths) == set(flat) == set(converted)
    assert paths == [tuple(n.split(".")) for n in sd]  # the torch name is the Flax path
    # layouts: Linear [out, in] -> [in, out], Conv OIHW -> HWIO, filter [1,1,k,k] -> [k,k]
    np.testing.assert_array_equal(converted[("model", "map_label", "weight")],
                                  sd["model.map_label.weight"].T)
    np.testing.assert_array_equal(converted[("model", "enc", "16x16_conv", "weight")],
                                  sd["model.enc.16x16_conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        converted[("model", "enc", "8x8_down", "conv0", "resample_filter")],
        np.full((2, 2), 0.25, np.float32))
    # a missing or an extra torch array is reported
    missing = {k: v for k, v in sd.items() if k != "model.dec.8x8_in0.proj.bias"}
    with pytest.raises(ValueError, match="missing.*8x8_in0.proj.bias"):
        edm.convert_state_dict(abstract, missing)
    extra = {**sd, "model.dec.8x8_in0.extra.weight": np.zeros((2, 2), np.float32)}
    with pytest.raises(ValueError, match="unexpected.*extra"):
        edm.convert_state_dict(abstract, extra)


def test_recorded_layer_attributes_are_checked():
    snap = read_edm_pickle(PKL)
    abstract = edm.build_from_record(snap.ema)
    modules = named_modules(snap.ema)
    edm._check_records(abstract, modules)  # the fixture agrees with the rebuilt architecture
    modules["model.enc.16x16_block0.norm0"].state["eps"] = 1e-5  # ADM's eps, not SongUNet's
    with pytest.raises(ValueError, match="16x16_block0.norm0"):
        edm._check_records(abstract, modules)
    modules["model.enc.16x16_block0.norm0"].state["eps"] = 1e-6
    modules["model.dec.8x8_in1"].state["num_heads"] = 1
    with pytest.raises(ValueError, match="8x8_in1"):
        edm._check_records(abstract, modules)


def test_qkv_deinterleave():
    # torch rows are (head, channel, {q,k,v}) with q/k/v fastest: row 3j+s -> Flax column s*C+j
    c = 4
    rows = np.arange(3 * c, dtype=np.float32)
    w = np.broadcast_to(rows[:, None, None, None], (3 * c, c, 1, 1))
    _, wf = edm.torch_to_flax("model.enc.8x8_block0.qkv.weight", w)
    _, bf = edm.torch_to_flax("model.enc.8x8_block0.qkv.bias", rows)
    want = np.array([3 * j + s for s in range(3) for j in range(c)], np.float32)
    np.testing.assert_array_equal(bf, want)
    np.testing.assert_array_equal(wf[0, 0, 0], want)
    assert wf.shape == (1, 1, c, 3 * c)


def test_resamplers_with_11_filter():
    x = jax.random.normal(jax.random.key(0), (2, 4, 6, 3))
    down = edm.Conv2d(3, 3, 0, down=True)
    up = edm.Conv2d(3, 3, 0, up=True)
    pooled = x.reshape(2, 2, 2, 3, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(np.asarray(down(x)), np.asarray(pooled), rtol=1e-6, atol=1e-6)
    nearest = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    np.testing.assert_allclose(np.asarray(up(x)), np.asarray(nearest), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(embedding_type="sinusoid"), "embedding_type='sinusoid' is not a SongUNet option"),
    (dict(encoder_type="dense"), "encoder_type='dense'"),
    (dict(decoder_type="residual"), "decoder_type='residual'"),
    (dict(model_type="DiT"), "model_type='DiT' is not supported"),
    (dict(num_heads=2), r"unsupported constructor arguments \['num_heads'\]"),
])
def test_unsupported_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        edm.nnx.eval_shape(lambda: edm.EDMPrecondNet(16, 3, model_channels=8, channel_mult=[1],
                                                     **kwargs))


@pytest.mark.parametrize("kwargs, arrays, params", [
    # edm-cifar10-32x32-cond-vp / -uncond-vp, edm-ffhq/afhqv2-64x64-uncond-vp (spec table 2.4)
    (dict(img_resolution=32, label_dim=10, channel_mult=[2, 2, 2]), 427, 55_735_299),
    (dict(img_resolution=32, label_dim=0, channel_mult=[2, 2, 2]), 425, 55_733_891),
    (dict(img_resolution=64, label_dim=0, channel_mult=[1, 2, 2, 2]), 553, 61_805_571),
])
def test_official_ddpmpp_configurations_have_the_official_sizes(kwargs, arrays, params):
    """Shape-only builds (no memory, no compile) of the released DDPM++ configurations give the
    array and parameter counts the spec measured on the upstream classes."""
    net = edm.nnx.eval_shape(lambda: edm.EDMPrecondNet(img_channels=3, augment_dim=9,
                                                       model_channels=128, **kwargs))
    flat = edm._flat_state(net)
    assert len(flat) == arrays
    assert sum(int(np.prod(v.get_value().shape)) for p, v in flat.items()
               if p[-1] != "resample_filter") == params


def test_import_checkpoint_writes_a_directory_that_loads_the_same_network(loaded, tmp_path,
                                                                          capsys):
    """`jaxdiff import-checkpoint FILE --out DIR`: Orbax parameters + edm.json; `edm.load(DIR)`
    gives the same parameters bit for bit and the recorded outputs, without the pickle. An
    occupied --out is refused with exit 2 and nothing written."""
    from jaxdiff import cli
    out = tmp_path / "imported"
    assert cli.main(["import-checkpoint", str(PKL), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    denoise, meta = edm.load(out)
    _, ref_meta, io = loaded
    for a, b in zip(jax.tree.leaves(meta["params"]), jax.tree.leaves(ref_meta["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert meta["constructor"] == ref_meta["constructor"]
    assert meta["precond"] == ref_meta["precond"] and meta["source"] == str(PKL)
    got = nchw(denoise(nhwc(io["x"]), jnp.asarray(io["sigma"]), jnp.asarray(io["class_labels"])))
    assert max(rel_err_per_image(got, io["out"])) <= RTOL
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(SystemExit) as e:
        cli.main(["import-checkpoint", str(PKL), "--out", str(out)])
    assert e.value.code == 2 and "already exists and is not an empty directory" in \
        capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
    with pytest.raises(SystemExit) as e:   # not an EDM pickle: refused naming the file
        cli.main(["import-checkpoint", str(IO), "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and str(IO) in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_bfloat16_compute_with_float32_parameters(loaded):
    """compute_dtype=bfloat16: the convolutions run in bfloat16 (the compiled program says so),
    the parameters stay float32, and D(x) stays close to the float32 result."""
    _, meta, io = loaded
    args = (meta["params"], nhwc(io["x"]), jnp.asarray(io["sigma"]),
            jnp.asarray(io["class_labels"]))
    ref = np.asarray(meta["apply"](*args))
    low = np.asarray(meta["apply"](*args, compute_dtype=jnp.bfloat16))
    assert low.dtype == np.float32
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(meta["params"]))
    err = rel_err_per_image(low, ref)
    # measured: 3e-5, 5.5e-3, 1.2e-2, 1.1e-2 per image (F_x alone: 1.0e-2 to 1.4e-2); bfloat16
    # keeps 8 bits of mantissa (relative step 4e-3)
    assert max(err) < 3e-2, err
    hlo = meta["apply"].lower(*args, compute_dtype=jnp.bfloat16).as_text()
    assert "bf16" in hlo and "convolution" in hlo


# ---------------------------------------------------------------------------------------------
# NCSN++ (Fourier embedding, residual encoder with fused resampling) and the VP / VE / iDDPM
# preconditioners, against tests/fixtures/edm_ncsn/ (tiny networks built and run by the upstream
# classes; random weights; see its README)

NCSN = Path(__file__).resolve().parents[1] / "fixtures" / "edm_ncsn"
NCSN_NETS = {   # fixture -> (preconditioner record, SongUNet options)
    "ncsnpp_ve_cond": (dict(class_name="VEPrecond", sigma_min=0.02, sigma_max=100.0),
                       dict(embedding_type="fourier", encoder_type="residual",
                            resample_filter=[1, 3, 3, 1], channel_mult_noise=2)),
    "ddpmpp_vp_uncond": (dict(class_name="VPPrecond", beta_d=19.9, beta_min=0.1, M=1000,
                              epsilon_t=1e-5, sigma_min=0.0009765625,
                              sigma_max=152.16697692871094),
                         dict(embedding_type="positional", encoder_type="standard")),
    "iddpm_skip_cond": (dict(class_name="iDDPMPrecond", C_1=0.001, C_2=0.008, M=1000,
                             sigma_min=0.006422337144613266, sigma_max=20291.169921875),
                        dict(encoder_type="skip", decoder_type="skip")),
}
# Measured on CPU (float32), max|ours - ref| / max|ref| per image: out <= 1.5e-6, F_x <= 1.1e-6
# (README table). The issue asks for 1e-5.
NCSN_RTOL = 1e-5


def _outputs(meta, io):
    """(jitted run(params, *args) -> (out, F_x), args) of the port on the fixture's inputs."""
    labels = jnp.asarray(io["class_labels"]) if "class_labels" in io else None
    graphdef = meta["graphdef"]

    @jax.jit
    def run(params, x, sigma, labels, model_in, c_noise):
        net = edm.nnx.merge(graphdef, params)
        return net(x, sigma, labels), net.raw(model_in, c_noise, labels)

    return run, (nhwc(io["x"]), jnp.asarray(io["sigma"]), labels, nhwc(io["model_in"]),
                 jnp.asarray(io["c_noise"]))


@pytest.fixture(scope="module", params=list(NCSN_NETS))
def ncsn(request):
    """(name, meta, io, run, (params, *inputs), [out, F_x]) of one fixture network loaded from
    its pickle."""
    name = request.param
    _, meta = edm.load(NCSN / f"{name}.pkl")
    io = dict(np.load(NCSN / f"{name}_io.npz"))
    run, args = _outputs(meta, io)
    # committed to a device, as arrays restored by Orbax are: the same compiled `run` serves both
    params = jax.device_put(meta["params"], jax.devices()[0])
    return name, meta, io, run, (params,) + args, [nchw(a) for a in run(params, *args)]


def test_ncsn_fixture_networks_match_pytorch(ncsn):
    """Each preconditioner around its SongUNet reproduces upstream's D(x) (with and without
    labels) and raw F_x; the preconditioner's own c_noise and c_in match what upstream fed the
    network; the record of the preconditioner is what the pickle says."""
    name, meta, io, run, args, (out, f_x) = ncsn
    precond, options = NCSN_NETS[name]
    assert meta["precond"] == precond
    assert {k: meta["constructor"][k] for k in options} == options
    assert max(rel_err_per_image(out, io["out"])) <= NCSN_RTOL
    assert max(rel_err_per_image(f_x, io["F_x"])) <= NCSN_RTOL
    if "out_nolabels" in io:   # labels None: upstream's zero row (same program, zero labels)
        params, x, sigma, labels, model_in, c_noise = args
        no = nchw(run(params, x, sigma, jnp.zeros_like(labels), model_in, c_noise)[0])
        assert max(rel_err_per_image(no, io["out_nolabels"])) <= NCSN_RTOL
    c_skip, c_out, c_in, c_noise = meta["net"].scalings(jnp.asarray(io["sigma"]))
    # VP: XLA divides by the constant beta_d as a multiplication by its reciprocal: 1 ulp
    np.testing.assert_allclose(np.asarray(c_noise), io["c_noise"], rtol=1e-7, atol=0)
    np.testing.assert_allclose(np.asarray(c_in)[:, None, None, None] * io["x"], io["model_in"],
                               rtol=1e-7, atol=0)
    if name == "iddpm_skip_cond":   # nearest entry of u: sigma 0.002 -> u[1000] = 0 -> -1
        np.testing.assert_array_equal(np.asarray(c_noise), [-1, 289, 701, 991])
        assert f_x.shape[1] == 6 and out.shape[1] == 3   # D uses the first img_channels


def test_ncsnpp_state_dict_maps_one_to_one_and_bad_arrays_are_named():
    """The NCSN++ arrays (Fourier freqs, fused `_aux_residual` convs, 4x4 filters) land on their
    Flax paths; a missing or mis-shaped array is refused with its name."""
    snap = read_edm_pickle(NCSN / "ncsnpp_ve_cond.pkl")
    sd = state_dict(snap.ema)
    abstract = edm.build_from_record(snap.ema)
    converted = edm.convert_state_dict(abstract, sd)
    assert set(converted) == set(edm._flat_state(abstract)) == {tuple(n.split(".")) for n in sd}
    np.testing.assert_array_equal(converted[("model", "map_noise", "freqs")],
                                  sd["model.map_noise.freqs"])
    assert converted[("model", "enc", "4x4_aux_residual", "weight")].shape == (3, 3, 8, 16)
    binomial = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64
    np.testing.assert_array_equal(
        converted[("model", "enc", "8x8_aux_residual", "resample_filter")], binomial)
    assert abstract.model.enc["8x8_aux_residual"].fused_resample
    missing = {k: v for k, v in sd.items() if k != "model.map_noise.freqs"}
    with pytest.raises(UserError, match=r"missing \(no torch array\): model\.map_noise\.freqs"):
        edm.convert_state_dict(abstract, missing)
    bad = dict(sd)
    bad["model.enc.4x4_aux_residual.weight"] = np.zeros((16, 3, 3, 3), np.float32)
    bad["model.map_noise.freqs"] = np.zeros((8, 1), np.float32)
    with pytest.raises(UserError) as e:
        edm.convert_state_dict(abstract, bad)
    assert "mis-shaped: model.enc.4x4_aux_residual.weight: shape (3, 3, 3, 16) (converted) != " \
        "Flax (3, 3, 8, 16)" in str(e.value)
    assert "mis-shaped: model.map_noise.freqs: no conversion rule for a 2-d" in str(e.value)
    assert "missing" not in str(e.value)
    # a recorded layer attribute that disagrees (a non-fused aux_residual) is named too
    modules = named_modules(snap.ema)
    edm._check_records(abstract, modules)
    modules["model.enc.8x8_aux_residual"].state["fused_resample"] = False
    with pytest.raises(UserError, match="8x8_aux_residual: up/down/fused_resample"):
        edm._check_records(abstract, modules)


def test_vp_ve_import_checkpoint_reloads_identically(ncsn, tmp_path):
    """`jaxdiff import-checkpoint` of a VP / VE / iDDPM pickle: edm.json records the
    preconditioner class and settings; `edm.load(DIR)` rebuilds the same network (graph with
    every static attribute, constructor, bitwise the same arrays) and gives bitwise the same
    outputs."""
    import json

    from jaxdiff import cli
    name, meta, io, run, args, outputs = ncsn
    dest = tmp_path / "imported"
    assert cli.main(["import-checkpoint", str(NCSN / f"{name}.pkl"), "--out", str(dest)]) == 0
    info = json.loads((dest / edm.IMPORTED_JSON).read_text())
    assert info["precond"] == NCSN_NETS[name][0] == edm.describe(dest)["precond"]
    _, meta2 = edm.load(dest)
    assert type(meta2["net"]) is type(meta["net"]) and meta2["constructor"] == meta["constructor"]
    assert repr(meta2["graphdef"]) == repr(meta["graphdef"])
    a, b = jax.tree.leaves(meta2["params"]), jax.tree.leaves(meta["params"])
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(run(meta2["params"], *args[1:]), outputs):
        np.testing.assert_array_equal(nchw(x), y)


@pytest.mark.parametrize("kwargs, arrays, params", [
    # edm-cifar10-32x32-cond-ve / -uncond-ve, edm-ffhq/afhqv2-64x64-uncond-ve (spec table 2.4)
    (dict(img_resolution=32, label_dim=10, channel_mult=[2, 2, 2]), 434, 56_400_643),
    (dict(img_resolution=32, label_dim=0, channel_mult=[2, 2, 2]), 432, 56_397_827),
    (dict(img_resolution=64, label_dim=0, channel_mult=[1, 2, 2, 2]), 563, 62_761_091),
])
def test_official_ncsnpp_configurations_have_the_official_sizes(kwargs, arrays, params):
    net = edm.nnx.eval_shape(lambda: edm.EDMPrecondNet(
        img_channels=3, augment_dim=9, model_channels=128, embedding_type="fourier",
        encoder_type="residual", channel_mult_noise=2, resample_filter=[1, 3, 3, 1], **kwargs))
    flat = edm._flat_state(net)
    assert len(flat) == arrays
    assert sum(int(np.prod(v.get_value().shape)) for p, v in flat.items()
               if p[-1] not in ("resample_filter", "freqs")) == params


def test_preconditioner_settings_derived_as_upstream():
    """Settings a record leaves out are derived in float32 as upstream: VP sigma_min is
    sigma(epsilon_t) = 0.0009765625, not 0.001; iDDPM's range comes from its buffer u."""
    vp = edm.precond_of({}, "VPPrecond")
    assert vp == NCSN_NETS["ddpmpp_vp_uncond"][0]
    iddpm = edm.precond_of({}, "iDDPMPrecond")
    u_file = state_dict(read_edm_pickle(NCSN / "iddpm_skip_cond.pkl").ema)["u"]
    u = edm.iddpm_u(1000, 0.001, 0.008)
    np.testing.assert_allclose(u, u_file, rtol=2e-5)   # see iddpm_u
    assert iddpm["sigma_min"] == pytest.approx(NCSN_NETS["iddpm_skip_cond"][0]["sigma_min"],
                                               rel=1e-6)
    assert iddpm["sigma_max"] == pytest.approx(20291.17, rel=1e-5)
    assert edm.precond_of({"sigma_min": 0.5}, "VEPrecond") == dict(
        class_name="VEPrecond", sigma_min=0.5, sigma_max=100.0)
    with pytest.raises(UserError, match="'FooPrecond' is not supported"):
        edm.precond_of({}, "FooPrecond")


def test_adm_pickle_loads_through_the_model_type_dispatch():
    """EDMPrecond(model_type='DhariwalUNet') (tests/fixtures/edm_adm) is built through the
    dispatch table, its records (positional endpoint False, adaptive_scale) check out and its
    state dict converts one to one (shape-only; the numbers are tests/models/test_adm.py's)."""
    from jaxdiff.models import adm
    snap = read_edm_pickle(Path(__file__).resolve().parents[1] / "fixtures" / "edm_adm"
                           / "edm_adm_cond.pkl")
    abstract = edm.build_from_record(snap.ema)
    assert isinstance(abstract.model, adm.DhariwalUNet)
    edm._check_records(abstract, named_modules(snap.ema))
    edm.convert_state_dict(abstract, state_dict(snap.ema))
    modules = named_modules(snap.ema)
    modules["model.enc.16x16_block0"].state["adaptive_scale"] = False
    with pytest.raises(UserError, match="16x16_block0: num_heads/skip_scale/adaptive_scale"):
        edm._check_records(abstract, modules)


def test_sample_source_uses_the_networks_own_preconditioner(tmp_path):
    """`jaxdiff sample --config.source=edm` with a non-EDM network (iDDPMPrecond here): the
    sampler's denoiser is the network's own preconditioner with one-hot labels, so it
    reproduces upstream's D(x) (class indices in, one-hot inside)."""
    from jaxdiff.pipelines import sample as SP
    from jaxdiff.specs.sample import resolve as resolve_sample
    from tests.helpers import tiny_sample_config
    pkl = NCSN / "iddpm_skip_cond.pkl"
    io = dict(np.load(NCSN / "iddpm_skip_cond_io.npz"))
    spec = resolve_sample(tiny_sample_config(tmp_path, model_dir=str(pkl), source="edm",
                                             **{"quality.enabled": False}))
    src = SP.load_source(spec)
    assert src.sample_shape == (16, 16, 3) and src.num_classes == 10
    assert "iDDPMPrecond(SongUNet)" in src.description
    cond = jnp.asarray(io["class_labels"].argmax(1))
    out = jax.jit(lambda s, x, sg, c: src.make_denoise(s)(x, sg, c))(
        src.state, nhwc(io["x"]), jnp.asarray(io["sigma"]), cond)
    assert max(rel_err_per_image(nchw(out), io["out"])) <= NCSN_RTOL
