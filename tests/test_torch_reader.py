"""jaxdiff.torch_reader: NVlabs/edm network pickles and torch.save state dicts read
without torch and without running code from the file.

- The real EDM fixture (shared/fixtures/edm): the 149 arrays, shapes, parameter count, init kwargs
  and the other top-level objects its README lists.
- torch.save files in the zip and the legacy format, written here by a small writer that emits the
  opcodes torch's pickler emits (its legacy output is checked byte for byte against a storage blob
  of the real fixture), with non-contiguous views, shared storages, float16, bfloat16, int64, uint8,
  0-d and empty tensors, and big-endian zip data.
- Security: malicious globals refused by name in every place a pickle is read, with a canary file
  that would exist had anything run; hostile arguments to allowed globals do not escape.
- Truncated, corrupt and foreign files give a UserError naming the file.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from jaxdiff.torch_reader import (
    CheckpointFormatError,
    ModuleRecord,
    UnsafePickleError,
    named_modules,
    read_edm_pickle,
    read_state_dict,
    read_torch_file,
    state_dict,
)
from jaxdiff.errors import MissingInputError, UserError

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "edm"
EDM_PKL = FIXTURES / "edm_ddpmpp_cond.pkl"
needs_fixture = pytest.mark.skipif(not EDM_PKL.is_file(), reason=f"no EDM fixture at {EDM_PKL}")

MAGIC = 0x1950A86A20F9469CFC6C
SYS_INFO = {"protocol_version": 1001, "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 4}}


# ---------------------------------------------------------------------------------------------
# A torch.save writer without torch: fake globals, storages and tensors, pickled by the standard
# (pure-Python) pickler, which emits the same protocol-2 opcodes as the C pickler torch uses.

@dataclasses.dataclass(eq=False, frozen=True)
class G:
    """A global `module.name` as pickle writes a class or function: GLOBAL, then memoized."""

    module: str
    name: str

    def __call__(self, *args):  # pickle requires reduce callables to be callable
        raise AssertionError("fake global called")


REBUILD_TENSOR = G("torch._utils", "_rebuild_tensor_v2")
REBUILD_PARAMETER = G("torch._utils", "_rebuild_parameter")
STORAGE_CLASS = {"f4": G("torch", "FloatStorage"), "f2": G("torch", "HalfStorage"),
                 "bf16": G("torch", "BFloat16Storage"), "i8": G("torch", "LongStorage"),
                 "u1": G("torch", "ByteStorage")}
ITEMSIZE = {"f4": 4, "f2": 2, "bf16": 2, "i8": 8, "u1": 1}


@dataclasses.dataclass(eq=False)
class Storage:
    kind: str            # a key of STORAGE_CLASS
    key: str
    values: np.ndarray   # 1-D; for bf16 the uint16 bit patterns
    view: tuple | None = None  # legacy view metadata (view_key, offset, size) of old PyTorch

    def bytes(self, order="<"):
        return self.values.astype(self.values.dtype.newbyteorder(order)).tobytes()


@dataclasses.dataclass(eq=False)
class Tensor:
    storage: Storage
    offset: int
    size: tuple
    stride: tuple
    parameter: bool = False

    def __reduce_ex__(self, protocol):  # what torch.Tensor / nn.Parameter reduce to
        if self.parameter:
            data = dataclasses.replace(self, parameter=False)
            return REBUILD_PARAMETER, (data, False, collections.OrderedDict())
        return REBUILD_TENSOR, (self.storage, self.offset, self.size, self.stride, False,
                                collections.OrderedDict())


@dataclasses.dataclass(eq=False)
class Call:
    """A call `func(*args)` in the stream (func usually a G)."""

    func: object
    args: tuple

    def __reduce_ex__(self, protocol):
        return self.func, self.args


class TorchPickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, f, persistent_id=None, protocol=2):
        super().__init__(f, protocol=protocol)
        self._pid = persistent_id

    def save_fake_global(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[G] = save_fake_global

    def persistent_id(self, obj):
        return self._pid(obj) if isinstance(obj, Storage) and self._pid else None


def dumps(obj, persistent_id=None, protocol=2) -> bytes:
    f = io.BytesIO()
    TorchPickler(f, persistent_id, protocol).dump(obj)
    return f.getvalue()


def legacy_bytes(obj, storages) -> bytes:
    """`torch.save(obj, f, _use_new_zipfile_serialization=False)`: 3 header pickles, the object
    pickle with 6-field storage ids, the sorted root keys, then per key int64 numel + bytes."""
    def pid(s):
        return ("storage", STORAGE_CLASS[s.kind], s.key, "cpu", len(s.values), s.view)

    parts = [pickle.dumps(MAGIC, protocol=2), pickle.dumps(1001, protocol=2),
             pickle.dumps(SYS_INFO, protocol=2), dumps(obj, pid)]
    roots = {s.key: s for s in storages}
    keys = sorted(roots)
    parts.append(pickle.dumps(keys, protocol=2))
    for k in keys:
        parts += [struct.pack("<q", len(roots[k].values)), roots[k].bytes("<")]
    return b"".join(parts)


def zip_bytes(path, obj, storages, prefix="archive", byteorder="little"):
    """`torch.save(obj, f)` (zip): records under `<prefix>/`, stored, each data start 64-byte
    aligned by a 'FB' padding extra field as torch's writer does; storages in the writer's byte
    order."""
    pkl = dumps(obj, lambda s: ("storage", STORAGE_CLASS[s.kind], s.key, "cpu", len(s.values)))
    order = {"little": "<", "big": ">"}[byteorder]
    records = [("data.pkl", pkl), (".format_version", b"1"), (".storage_alignment", b"64"),
               ("byteorder", byteorder.encode())]
    records += [(f"data/{s.key}", s.bytes(order)) for s in {s.key: s for s in storages}.values()]
    records += [("version", b"3\n"), (".data/serialization_id", b"0" * 40)]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in records:
            info = zipfile.ZipInfo(f"{prefix}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            start = zf.fp.tell() + 30 + len(info.filename.encode()) + 4
            pad = -start % 64
            info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
            zf.writestr(info, data)
            assert (zf.fp.tell() - len(data)) % 64 == 0
    return path


def sample_state_dict():
    """(object to save, its storages, the arrays torch would load) covering the layouts we read."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal(6).astype(np.float32)
    shared = rng.standard_normal(20).astype(np.float32)
    half = rng.standard_normal(5).astype(np.float16)
    f32 = (rng.standard_normal(6) * 100).astype(np.float32)
    bf_bits = (f32.view(np.uint32) >> 16).astype(np.uint16)  # bf16 = truncated float32
    st = {"w": Storage("f4", "0", w), "shared": Storage("f4", "1", shared),
          "half": Storage("f2", "2", half), "bf": Storage("bf16", "3", bf_bits),
          "count": Storage("i8", "4", np.array([7], np.int64)),
          "mask": Storage("u1", "5", np.arange(6, dtype=np.uint8)),
          "empty": Storage("f4", "6", np.zeros(0, np.float32))}
    sd = collections.OrderedDict([
        ("layer.weight", Tensor(st["w"], 0, (2, 3), (3, 1), parameter=True)),
        # non-contiguous: a transposed view at an offset, and a second view of the same storage
        ("layer.t", Tensor(st["shared"], 2, (3, 2), (1, 5))),
        ("layer.tail", Tensor(st["shared"], 15, (5,), (1,))),
        ("half", Tensor(st["half"], 0, (5,), (1,))),
        ("bf", Tensor(st["bf"], 0, (2, 3), (3, 1))),
        ("count", Tensor(st["count"], 0, (), ())),
        ("mask", Tensor(st["mask"], 0, (2, 3), (1, 2))),  # column-major
        ("empty", Tensor(st["empty"], 0, (0, 4), (4, 1))),
    ])
    sd._metadata = collections.OrderedDict([("", {"version": 1}), ("layer", {"version": 1})])
    expected = {
        "layer.weight": w.reshape(2, 3),
        "layer.t": np.array([[shared[2 + i + 5 * j] for j in range(2)] for i in range(3)]),
        "layer.tail": shared[15:],
        "half": half,
        "bf": (bf_bits.astype(np.uint32) << 16).view(np.float32).reshape(2, 3),
        "count": np.array(7, np.int64),
        "mask": np.arange(6, dtype=np.uint8).reshape(3, 2).T,
        "empty": np.zeros((0, 4), np.float32),
    }
    return sd, list(st.values()), expected


def write_sample(tmp_path, fmt):
    sd, storages, expected = sample_state_dict()
    path = tmp_path / "model.pt"
    if fmt == "legacy":
        path.write_bytes(legacy_bytes(sd, storages))
    elif fmt == "zip":
        zip_bytes(path, sd, storages)
    elif fmt == "zip-stem-prefix":
        zip_bytes(path, sd, storages, prefix="model")  # torch.save to a path names it so
    elif fmt == "zip-big-endian":
        zip_bytes(path, sd, storages, byteorder="big")
    return path, expected


# ---------------------------------------------------------------------------------------------
# The EDM fixture

# README table (and a few more names from the spec's naming rules)
FIXTURE_SHAPES = {
    "model.map_label.weight": (16, 10),
    "model.map_augment.weight": (16, 9),
    "model.map_layer0.weight": (64, 16),
    "model.enc.16x16_conv.weight": (16, 3, 3, 3),
    "model.enc.8x8_down.conv0.resample_filter": (1, 1, 2, 2),
    "model.enc.8x8_block0.qkv.weight": (96, 32, 1, 1),
    "model.dec.8x8_in0.affine.weight": (32, 64),
    "model.dec.16x16_aux_conv.weight": (3, 16, 3, 3),
}


@pytest.fixture(scope="module")
def snapshot():
    if not EDM_PKL.is_file():
        pytest.skip(f"no EDM fixture at {EDM_PKL}")
    return read_edm_pickle(EDM_PKL)


@needs_fixture
def test_fixture_state_dict_names_shapes_and_count(snapshot):
    sd = state_dict(snapshot.ema)
    params = state_dict(snapshot.ema, buffers=False)
    assert len(sd) == 149 and len(params) == 145
    assert sorted(set(sd) - set(params)) == sorted(
        ["model.enc.8x8_down.conv0.resample_filter", "model.enc.8x8_down.skip.resample_filter",
         "model.dec.16x16_up.conv0.resample_filter", "model.dec.16x16_up.skip.resample_filter"])
    assert sum(a.size for a in params.values()) == 189_667
    assert all(k.startswith("model.") for k in sd)
    assert {a.dtype for a in sd.values()} == {np.dtype(np.float32)}
    for name, shape in FIXTURE_SHAPES.items():
        assert sd[name].shape == shape, name
    assert "model.map_augment.bias" not in sd  # Linear(bias=False): a None parameter is skipped
    # torch order: parameters, then buffers, then children, depth first in registration order
    names = list(sd)
    assert names[:3] == ["model.map_label.weight", "model.map_label.bias",
                         "model.map_augment.weight"]
    assert names[-1] == "model.dec.16x16_aux_conv.bias"
    assert names.index("model.enc.8x8_down.conv0.weight") < names.index(
        "model.enc.8x8_down.conv0.bias") < names.index("model.enc.8x8_down.conv0.resample_filter")


@needs_fixture
def test_fixture_values_are_the_generated_ones(snapshot):
    """The README's recipe: resample_filter [1,1] -> K = 1/4; weights std 1/sqrt(fan_in);
    biases std 0.2; GroupNorm scales 1 +- 0.2. Wrong offsets/dtypes/byte order would break these."""
    sd = state_dict(snapshot.ema)
    np.testing.assert_array_equal(sd["model.enc.8x8_down.conv0.resample_filter"],
                                  np.full((1, 1, 2, 2), 0.25, np.float32))
    for name in ["model.map_layer1.weight", "model.enc.16x16_block0.conv0.weight"]:
        w = sd[name]
        assert abs(w.std() * np.sqrt(np.prod(w.shape[1:])) - 1) < 0.1, name
    norms = np.concatenate([a for k, a in sd.items() if ".norm" in k and k.endswith("weight")])
    assert abs(norms.mean() - 1) < 0.02 and abs(norms.std() - 0.2) < 0.03
    assert all(not a.flags.writeable for a in sd.values())


@needs_fixture
def test_fixture_init_kwargs_and_attributes(snapshot):
    ema = snapshot.ema
    assert ema.class_name == "EDMPrecond"
    kw = ema.init_kwargs
    assert kw["model_type"] == "SongUNet" and kw["embedding_type"] == "positional"
    assert kw["encoder_type"] == kw["decoder_type"] == "standard"
    assert (kw["img_resolution"], kw["img_channels"], kw["label_dim"], kw["augment_dim"]) == \
        (16, 3, 10, 9)
    assert (kw["model_channels"], kw["channel_mult"], kw["num_blocks"]) == (16, [1, 2], 1)
    assert kw["attn_resolutions"] == [8] and kw["resample_filter"] == [1, 1]
    assert kw["channel_mult_noise"] == 1 and kw["dropout"] == 0.13 and kw["use_fp16"] is False
    # sigma_* are constructor defaults, so they are attributes, not init kwargs
    assert ema.attrs["sigma_data"] == 0.5 and ema.attrs["sigma_min"] == 0
    assert ema.attrs["sigma_max"] == float("inf") and ema.state["training"] is False
    model = ema.children["model"]
    assert model.class_name == "SongUNet"
    assert (model.init_kwargs["in_channels"], model.init_kwargs["out_channels"]) == (3, 3)
    modules = named_modules(ema)
    assert modules["model.enc"].class_name == "ModuleDict"  # a plain torch class, not persistent
    assert list(modules["model.enc"].children) == [
        "16x16_conv", "16x16_block0", "8x8_down", "8x8_block0"]
    assert list(modules["model.dec"].children) == [
        "8x8_in0", "8x8_in1", "8x8_block0", "8x8_block1", "16x16_up", "16x16_block0",
        "16x16_block1", "16x16_aux_norm", "16x16_aux_conv"]
    block = modules["model.enc.8x8_block0"]
    assert block.class_name == "UNetBlock" and block.attrs["num_heads"] == 1
    # numpy.float64 attribute (numpy.core.multiarray.scalar) decoded to the equal Python float
    assert type(block.attrs["skip_scale"]) is float and block.attrs["skip_scale"] == np.sqrt(0.5)
    conv = modules["model.enc.8x8_down.conv0"]
    assert conv.class_name == "Conv2d" and conv.attrs["down"] is True


@needs_fixture
def test_fixture_other_top_level_objects(snapshot):
    assert snapshot.loss_fn.class_name == "EDMLoss"
    assert snapshot.loss_fn.attrs == {"P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5}
    assert snapshot.augment_pipe.class_name == "AugmentPipe"
    assert snapshot.augment_pipe.attrs["p"] == 0.12
    assert snapshot.dataset_kwargs["class_name"] == "training.dataset.ImageFolderDataset"
    assert snapshot.dataset_kwargs["resolution"] == 16 and snapshot.dataset_kwargs["use_labels"]
    # no EDM/torch code was imported, and the embedded source was not kept
    assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "torch_utils", "dnnlib",
                                                             "training")]
    for record in named_modules(snapshot.ema).values():
        assert "module_src" not in vars(record) and "module_src" not in record.state


@needs_fixture
def test_legacy_writer_matches_a_real_torch_storage_blob():
    """The first storage blob of the fixture (written by real PyTorch) is re-written byte for byte
    by `legacy_bytes`, so the legacy files of the tests below have torch's exact layout."""
    blob = next(arg for op, arg, _ in pickletools.genops(EDM_PKL.read_bytes())
                if op.name == "BINBYTES")
    key = next(arg for op, arg, _ in pickletools.genops(blob[137:]) if op.name == "BINUNICODE"
               and arg.isdigit())
    (numel,) = struct.unpack_from("<q", blob, len(blob) - 8 - 4 * 160)
    values = np.frombuffer(blob[-4 * numel:], "<f4")
    st = Storage("f4", key, values)
    assert legacy_bytes(st, [st]) == blob


# ---------------------------------------------------------------------------------------------
# torch.save state dicts

@pytest.mark.parametrize("fmt", ["legacy", "zip", "zip-stem-prefix", "zip-big-endian"])
def test_state_dict_round_trip(tmp_path, fmt):
    path, expected = write_sample(tmp_path, fmt)
    sd = read_state_dict(path)
    assert list(sd) == list(expected)
    for name, want in expected.items():
        got = sd[name]
        assert got.dtype == want.dtype.newbyteorder("=") and got.shape == want.shape, name
        assert got.dtype.isnative and not got.flags.writeable
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert not sd["layer.t"].flags.c_contiguous  # kept as the strided view torch has


def test_legacy_storage_views_of_old_pytorch(tmp_path):
    """Old PyTorch wrote views of a storage with view metadata (view_key, offset, size)."""
    root = np.arange(10, dtype=np.float32)
    whole = Storage("f4", "140001", root)
    part = Storage("f4", "140001", root, view=("140002", 4, 3))
    sd = {"a": Tensor(whole, 0, (10,), (1,)), "b": Tensor(part, 1, (2,), (1,))}
    path = tmp_path / "old.pt"
    path.write_bytes(legacy_bytes(sd, [whole]))
    out = read_state_dict(path)
    np.testing.assert_array_equal(out["a"], root)
    np.testing.assert_array_equal(out["b"], root[5:7])


def test_nested_checkpoint_needs_key(tmp_path):
    sd, storages, expected = sample_state_dict()
    path = tmp_path / "ckpt.pt"
    zip_bytes(path, {"state_dict": sd, "epoch": 3}, storages)
    with pytest.raises(CheckpointFormatError, match="key="):
        read_state_dict(path)
    np.testing.assert_array_equal(read_state_dict(path, key="state_dict")["bf"], expected["bf"])
    assert read_torch_file(path)["epoch"] == 3


# ---------------------------------------------------------------------------------------------
# Security

class Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(canary: Path):
    """Pickles that would create `canary` if unpickled, with the global each one names."""
    code = f"__import__('pathlib').Path({str(canary)!r}).touch()"
    return {
        "os.system": (pickle.dumps(Evil(os.system, f"touch '{canary}'"), protocol=2),
                      f"{os.system.__module__}.system"),
        "builtins.eval": (pickle.dumps(Evil(eval, code), protocol=4), "builtins.eval"),
        # protocol < 3 writes Python 2 names; the refusal names the global as the file spells it
        "builtins.exec": (pickle.dumps(Evil(exec, code), protocol=0), "__builtin__.exec"),
        "subprocess.Popen": (pickle.dumps(Evil(subprocess.Popen, ["touch", str(canary)]),
                                          protocol=5), "subprocess.Popen"),
    }


def test_canary_control(tmp_path):
    """Plain pickle would run every payload: the canary file does detect execution."""
    for name, (data, _) in payloads(tmp_path / "ran").items():
        (tmp_path / "ran").unlink(missing_ok=True)
        result = pickle.loads(data)
        if isinstance(result, subprocess.Popen):
            result.wait()
        assert (tmp_path / "ran").exists(), name


def _legacy_header():
    return b"".join(pickle.dumps(x, protocol=2) for x in (MAGIC, 1001, SYS_INFO))


PLACES = {
    # where the malicious pickle sits -> (file bytes, reader)
    "edm pickle": (lambda p: p, read_edm_pickle),
    "whole torch file": (lambda p: p, read_state_dict),
    "legacy object pickle": (lambda p: _legacy_header() + p, read_state_dict),
    "edm storage blob": (lambda p: dumps(
        {"ema": Call(G("torch.storage", "_load_from_bytes"), (_legacy_header() + p,))},
        protocol=4), read_edm_pickle),
}


@pytest.mark.parametrize("place", [*PLACES, "zip data.pkl"])
@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "builtins.exec",
                                     "subprocess.Popen"])
def test_malicious_global_refused(tmp_path, place, payload):
    canary = tmp_path / "ran"
    data, global_name = payloads(canary)[payload]
    path = tmp_path / "evil.pkl"
    if place == "zip data.pkl":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", data)
        reader = read_state_dict
    else:
        wrap, reader = PLACES[place]
        path.write_bytes(wrap(data))
    with pytest.raises(UnsafePickleError) as err:
        reader(path)
    msg = str(err.value)
    assert global_name in msg and str(path) in msg and "not a format jaxdiff imports" in msg
    assert not canary.exists()


def test_persistence_reconstructor_never_executes_module_src(tmp_path):
    canary = tmp_path / "ran"
    src = f"import pathlib\npathlib.Path({str(canary)!r}).touch()\nclass EDMPrecond: pass\n"
    meta = {"type": "class", "version": 6, "module_src": src, "class_name": "EDMPrecond",
            "state": {"_modules": {}, "_init_kwargs": {"label_dim": 10}}}
    recon = G("torch_utils.persistence", "_reconstruct_persistent_obj")
    path = tmp_path / "net.pkl"
    path.write_bytes(dumps({"ema": Call(recon, (meta,))}, protocol=4))
    snap = read_edm_pickle(path)
    assert not canary.exists()
    assert isinstance(snap.ema, ModuleRecord) and snap.ema.class_name == "EDMPrecond"
    assert snap.ema.init_kwargs == {"label_dim": 10} and state_dict(snap.ema) == {}
    assert "module_src" not in vars(snap.ema)


def _raw(ops: bytes) -> bytes:
    """A hand-assembled protocol-0 pickle (opcodes the standard pickler would never emit)."""
    return ops + b"."


def _one_storage(offset, size, stride):
    st = Storage("f4", "1", np.zeros(4, np.float32))
    return legacy_bytes({"w": Tensor(st, offset, size, stride)}, [st])


HOSTILE = {  # case -> (file bytes, reader, what the error must say)
    # views reaching past their 4-element storage must not read outside the bytes
    "out-of-bounds view": (lambda: _one_storage(0, (3,), (2,)), read_state_dict, "reaches element"),
    "offset past the storage": (lambda: _one_storage(4, (1,), (1,)), read_state_dict,
                                "reaches element"),
    # BUILD on an allowed function (would set its __defaults__ for later loads)
    "BUILD on a global": (lambda: _legacy_header() + _raw(
        b"ctorch._utils\n_rebuild_tensor_v2\n(N(dV__defaults__\n(I1\ntstb"), read_state_dict,
        "BUILD on a function"),
    # BUILD on a storage type (a stand-in's fields must not be replaceable)
    "BUILD on a storage type": (lambda: _legacy_header() + _raw(b"ctorch\nFloatStorage\n(N(dtb"),
                                read_state_dict, "BUILD on torch.FloatStorage"),
    # a storage id whose type is another allowed global
    "bad persistent id": (lambda: _legacy_header() + _raw(
        b"(Vstorage\nccollections\nOrderedDict\nV0\nVcpu\nI4\nNtQ"), read_state_dict,
        "malformed storage persistent id"),
    # an object numpy dtype would make numpy read pointers from the file's bytes
    "object numpy dtype": (lambda: dumps({"ema": Call(
        G("numpy.core.multiarray", "scalar"), (Call(G("numpy", "dtype"), ("O", False, True)),
                                                b"\0" * 8))}, protocol=4), read_edm_pickle,
        "not a plain numeric type"),
    # a persistent id in an EDM pickle (its storages are blobs, never persistent ids)
    "persistent id in an EDM pickle": (lambda: _raw(b"(Vstorage\ntQ"), read_edm_pickle,
                                       "unexpected persistent id"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_arguments_to_allowed_globals(tmp_path, case):
    make, reader, reason = HOSTILE[case]
    path = tmp_path / "hostile.pkl"
    path.write_bytes(make())
    with pytest.raises(CheckpointFormatError) as err:
        reader(path)
    assert str(path) in str(err.value) and reason in str(err.value)


def test_build_on_a_global_does_not_change_later_loads(tmp_path):
    path = tmp_path / "hostile.pkl"
    path.write_bytes(HOSTILE["BUILD on a global"][0]())
    with pytest.raises(CheckpointFormatError, match="BUILD"):
        read_state_dict(path)
    test_state_dict_round_trip(tmp_path, "legacy")


# ---------------------------------------------------------------------------------------------
# Truncated, corrupt and foreign files

@needs_fixture
@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.3, 0.999])
def test_truncated_edm_pickle(tmp_path, fraction):
    data = EDM_PKL.read_bytes()
    path = tmp_path / "cut.pkl"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(UserError, match=str(path)):
        read_edm_pickle(path)


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
@pytest.mark.parametrize("cut", [10, 200, -3])
def test_truncated_state_dict(tmp_path, fmt, cut):
    path, _ = write_sample(tmp_path, fmt)
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(UserError, match=str(path)):
        read_state_dict(path)


def test_corrupt_zip_storage_is_caught_by_its_crc(tmp_path):
    path, _ = write_sample(tmp_path, "zip")
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("archive/data/1")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointFormatError, match="CRC"):
        read_state_dict(path)


@pytest.mark.parametrize("content", [b"", b"hello world\n", b"\x89PNG\r\n\x1a\n" + b"\0" * 64,
                                     pickle.dumps([1, 2, 3], protocol=2)])
def test_foreign_files(tmp_path, content):
    path = tmp_path / "foreign.bin"
    path.write_bytes(content)
    for reader in (read_edm_pickle, read_state_dict):
        with pytest.raises(UserError, match=str(path)):
            reader(path)


def test_zip_without_data_pkl(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(CheckpointFormatError, match="data.pkl"):
        read_state_dict(path)


def test_missing_file(tmp_path):
    for reader in (read_edm_pickle, read_state_dict):
        with pytest.raises(MissingInputError, match="nothing.pkl"):
            reader(tmp_path / "nothing.pkl")


@needs_fixture
def test_wrong_reader_says_which_to_use(tmp_path):
    with pytest.raises(UnsafePickleError, match="read_edm_pickle"):
        read_state_dict(EDM_PKL)
    for fmt in ("zip", "legacy"):
        path, _ = write_sample(tmp_path, fmt)
        with pytest.raises(CheckpointFormatError, match="read_state_dict"):
            read_edm_pickle(path)
