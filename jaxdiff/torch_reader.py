"""Read PyTorch weights and NVlabs/edm network pickles without PyTorch and without running code.

A pickle is a program: its GLOBAL/STACK_GLOBAL opcodes import any module attribute and REDUCE calls
it, so `pickle.load` on a downloaded checkpoint runs whatever the file says. This module is the
security boundary. `_RestrictedUnpickler.find_class` answers only the (module, name) pairs of an
explicit table, and each maps to a stand-in defined here that checks its arguments and builds plain
data (numpy arrays, dicts, `ModuleRecord`s). Anything else raises `UnsafePickleError` before it is
called. PyTorch, `torch_utils` and `dnnlib` are never imported, and EDM's embedded `module_src` is
never executed (not even read).

Formats (shared/specs/edm-checkpoints.md, section 1):
- NVlabs/edm network pickle (`read_edm_pickle`): a plain pickle of
  {'ema', 'loss_fn', 'augment_pipe', 'dataset_kwargs'}. EDM objects are calls to
  `torch_utils.persistence._reconstruct_persistent_obj(meta)`; each tensor's storage is
  `torch.storage._load_from_bytes(blob)`, the blob being a complete legacy `torch.save` stream of
  that one storage.
- `torch.save` zip (`read_state_dict`, the default since PyTorch 1.6): a zip of `<prefix>/data.pkl`
  (protocol-2 pickle; storages are persistent ids ('storage', <Type>Storage, key, location, numel)),
  `<prefix>/data/<key>` (raw storage bytes in the writer's byte order), `<prefix>/byteorder`
  ('little'/'big'; absent in old files, which are little-endian) and bookkeeping records we ignore.
  The prefix is the saved file's stem, or 'archive' when saved to a buffer.
- legacy `torch.save` (`_use_new_zipfile_serialization=False`): pickles of the magic number, the
  protocol version 1001 and a sys-info dict, then the object pickle whose storages are persistent
  ids ('storage', <Type>Storage, key, location, numel, view_metadata), then a pickled list of keys,
  then per key an int64 little-endian element count and the bytes. Legacy storage bytes are always
  little-endian (torch swaps on write and ignores sys-info on read).

Arrays come back as read-only numpy arrays with the tensor's shape and dtype, built from
(storage, storage_offset, size, stride) exactly as torch views its storage: a non-contiguous tensor
is a strided view, and arrays are zero-copy views on the file's bytes when the bytes are native.
Copy (`np.array(a)`) to modify. bfloat16 (numpy has no such dtype) becomes float32, exactly: a
bfloat16 is the top 16 bits of the float32 with the same value, so the bits are shifted left by 16.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import pickle
import struct
import types
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from jaxdiff.errors import MissingInputError, UserError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # first pickle of a legacy torch.save stream
LEGACY_PROTOCOL = 1001                # its second pickle
_ZIP_MAGIC = b"PK\x03\x04"


class UnsafePickleError(UserError):
    """The pickle names a global outside the allow-list (refused before anything is called)."""


class CheckpointFormatError(UserError):
    """The file is truncated, corrupt, or not the format the reader was asked for."""


# ---------------------------------------------------------------------------------------------
# Data records (what the stand-ins build)

class ModuleRecord:
    """A torch module (or EDM loss/augment object) as data: its class name and instance dict.

    `state` is the pickled `__dict__`: for modules `_parameters` / `_buffers` (name -> array or
    None), `_modules` (name -> ModuleRecord, in registration order, which the EDM forward pass
    relies on), `_non_persistent_buffers_set`, `training`, the class's own attributes
    (in_channels, up, ...) and, for EDM persistent classes, `_init_args` / `_init_kwargs` (the
    constructor arguments).
    """

    class_name = "?"
    state: Mapping = types.MappingProxyType({})  # until BUILD fills it (NEWOBJ'd containers)

    def __init__(self, class_name: str, state: dict):
        if not isinstance(class_name, str) or not isinstance(state, dict):
            raise ValueError("a module record needs a str class name and a dict state")
        self.class_name, self.state = class_name, state

    def __setstate__(self, state):
        # BUILD of an ordinary torch module (ModuleDict, ...): NEWOBJ made an empty instance.
        if not isinstance(state, dict):
            raise ValueError(f"{self.class_name}: module state must be a dict, "
                             f"not {type(state).__name__}")
        self.state = state

    @property
    def init_kwargs(self) -> dict:
        """Constructor keyword arguments EDM's persistence decorator recorded ({} if none)."""
        kwargs = self.state.get("_init_kwargs")
        return dict(kwargs) if isinstance(kwargs, dict) else {}

    @property
    def attrs(self) -> dict:
        """The class's own attributes: the state without torch's `_private` entries, `training`."""
        return {k: v for k, v in self.state.items() if not k.startswith("_") and k != "training"}

    @property
    def children(self) -> dict[str, ModuleRecord]:
        """Child modules in registration order (None entries skipped, as torch does)."""
        out = {}
        for name, child in _entries(self, "_modules").items():
            if child is None:
                continue
            if not isinstance(child, ModuleRecord):
                raise CheckpointFormatError(
                    f"{self.class_name}: child {name!r} is a {type(child).__name__}, not a module")
            out[name] = child
        return out

    def __repr__(self):
        return f"ModuleRecord({self.class_name!r}, {len(self.children)} children)"


def _container(name: str) -> type:
    """Stand-in class for a torch container module stored as a plain class (NEWOBJ + BUILD)."""
    return type(name, (ModuleRecord,), {"class_name": name, "__module__": __name__})


@dataclasses.dataclass
class EDMSnapshot:
    """An NVlabs/edm network pickle. `ema` is the network (e.g. EDMPrecond; its `init_kwargs` hold
    model_type, label_dim, img_resolution, ...; its child 'model' the SongUNet/DhariwalUNet)."""

    ema: ModuleRecord
    loss_fn: Any = None            # ModuleRecord (EDMLoss, ...) or None; not needed for sampling
    augment_pipe: Any = None       # ModuleRecord (AugmentPipe) or None
    dataset_kwargs: Any = None     # plain dict
    path: Path | None = None


def _entries(module: ModuleRecord, key: str) -> dict:
    value = module.state.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CheckpointFormatError(
            f"{module.class_name}.{key} is a {type(value).__name__}, not a dict")
    return value


def named_modules(module: ModuleRecord) -> dict[str, ModuleRecord]:
    """Every module under `module` by dotted name ('' for `module`), in torch's `named_modules`
    order (what a port needs for per-layer attributes: up/down flags, num_heads, eps, ...).
    A module reachable under two names is listed under both, as `state_dict` lists its arrays."""
    out: dict[str, ModuleRecord] = {}

    def walk(m, prefix, stack):
        if id(m) in stack:  # only a hand-made pickle can nest a module in itself
            raise CheckpointFormatError(f"module cycle at {prefix or '<root>'}")
        out[prefix] = m
        for name, child in m.children.items():
            walk(child, f"{prefix}.{name}" if prefix else name, stack | {id(m)})

    walk(module, "", frozenset())
    return out


def state_dict(module: ModuleRecord, *, buffers: bool = True) -> dict[str, np.ndarray]:
    """The arrays `module.state_dict()` would give, under the same dotted names and in the same
    order: per module its non-None parameters, then its non-None persistent buffers, then its
    children. `buffers=False` gives the parameters only (torch's `named_parameters`).

    Arrays keep torch's layouts (Linear weight [out, in], Conv2d weight [out, in, kh, kw]) and
    dtypes (float32 throughout EDM files); they are read-only."""
    out: dict[str, np.ndarray] = {}
    for prefix, m in named_modules(module).items():
        dot = f"{prefix}." if prefix else ""
        skip = m.state.get("_non_persistent_buffers_set") or set()
        if not isinstance(skip, (set, frozenset)):
            raise CheckpointFormatError(f"{prefix or '<root>'}: _non_persistent_buffers_set is "
                                        f"a {type(skip).__name__}, not a set")
        groups = [("_parameters", set())] + ([("_buffers", skip)] if buffers else [])
        for key, excluded in groups:
            for name, value in _entries(m, key).items():
                if value is None or name in excluded:
                    continue
                if not isinstance(value, np.ndarray):
                    raise CheckpointFormatError(
                        f"{dot}{name} is a {type(value).__name__}, not a tensor")
                out[dot + name] = value
    return out


# ---------------------------------------------------------------------------------------------
# Storages and tensors

@dataclasses.dataclass(eq=False)
class _StorageType:
    """Stand-in for a `torch.<Type>Storage` class; only names an element type (not callable)."""

    name: str
    dtype: np.dtype            # as stored, little-endian; bfloat16 as its uint16 bits

    def __setstate__(self, state):
        raise ValueError(f"BUILD on torch.{self.name} is not part of any torch format")


_STORAGE_CODES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": "<u2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?", "ComplexFloatStorage": "<c8",
    "ComplexDoubleStorage": "<c16",
}


@dataclasses.dataclass(eq=False)
class _Storage:
    """One storage: `raw` is its 1-D element array as in the file (None until read, see
    `_read_legacy`); `native()` converts it once (native byte order, bfloat16 -> float32)."""

    type: _StorageType
    numel: int
    raw: np.ndarray | None = None
    _native: np.ndarray | None = None

    def __setstate__(self, state):
        raise ValueError("BUILD on a storage is not part of any torch format")

    def native(self) -> np.ndarray:
        if self._native is None:
            a = self.raw
            if self.type.name == "BFloat16Storage":
                a = (a.astype(np.uint32) << 16).view(np.float32)  # exact: bf16 = top half of f32
            elif not a.dtype.isnative:
                a = a.astype(a.dtype.newbyteorder("="))
            a.flags.writeable = False
            self._native = a
        return self._native


_UNREAD = object()  # a tensor whose storage bytes follow the object pickle (legacy first pass)


def _int_tuple(value, what: str) -> tuple[int, ...]:
    # type() is int, not isinstance: a bool is not a size
    if not isinstance(value, (tuple, list)) or not all(type(v) is int and v >= 0 for v in value):
        raise ValueError(f"tensor {what} must be a tuple of non-negative ints, got {value!r:.80}")
    return tuple(value)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    """The array torch would view in `storage`: shape `size`, element strides `stride`, starting at
    element `storage_offset`. Bounds are checked against the bytes actually present, so a hostile
    view cannot read outside them."""
    if not isinstance(storage, _Storage):
        raise ValueError(f"tensor storage is a {type(storage).__name__}, not a storage")
    if storage.raw is None:
        return _UNREAD
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(shape) != len(strides) or type(storage_offset) is not int or storage_offset < 0:
        raise ValueError(
            f"bad tensor view: offset {storage_offset!r}, size {shape}, stride {strides}")
    data = storage.native()
    if 0 in shape:
        empty = np.empty(shape, data.dtype)
        empty.flags.writeable = False
        return empty
    last = storage_offset + sum((n - 1) * s for n, s in zip(shape, strides))
    if last >= len(data):
        raise ValueError(f"tensor view (offset {storage_offset}, size {shape}, stride {strides}) "
                         f"reaches element {last} of a storage of {len(data)} elements")
    return np.lib.stride_tricks.as_strided(
        data[storage_offset:], shape, [s * data.itemsize for s in strides], writeable=False)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    """A Parameter is its tensor (requires_grad/hooks/state do not matter for weights)."""
    if not (data is _UNREAD or isinstance(data, np.ndarray)):
        raise ValueError(f"parameter data is a {type(data).__name__}, not a tensor")
    return data


def _storage_from_pid(pid) -> tuple[_StorageType, str, int, Any]:
    """Check a storage persistent id ('storage', type, key, location, numel[, view_metadata])."""
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
        raise ValueError(f"unsupported persistent id {pid!r:.100}")
    _, stype, key, _location, numel = pid[:5]
    if not isinstance(stype, _StorageType) or not isinstance(key, str) or type(numel) is not int \
            or numel < 0:
        raise ValueError(f"malformed storage persistent id {pid!r:.100}")
    return stype, key, numel, (pid[5] if len(pid) == 6 else None)


# ---------------------------------------------------------------------------------------------
# numpy scalars (EDM stores a few float64 attributes and init kwargs as numpy scalars)

class _NumpyDtype:
    """Stand-in for `numpy.dtype(code, align, copy)` as numpy pickles it: a numeric type code plus
    the byte order that BUILD supplies. numpy's own dtype `__setstate__` never sees the file's
    state."""

    def __init__(self, code, align=False, copy=False):
        dt = np.dtype(code) if isinstance(code, str) and len(code) <= 4 else None
        if dt is None or dt.kind not in "biufc":
            raise ValueError(f"numpy dtype {code!r:.40} is not a plain numeric type")
        self.dtype = dt

    def __setstate__(self, state):
        # numpy's dtype state: (version, byteorder, subarray, names, fields, elsize, align, flags)
        if not (isinstance(state, tuple) and len(state) >= 5 and state[1] in ("<", ">", "|", "=")
                and state[2:5] == (None, None, None)):
            raise ValueError(f"unsupported numpy dtype state {state!r:.80}")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_scalar(dtype, raw):
    """`numpy.core.multiarray.scalar(dtype, raw_bytes)`: decoded to the equal Python number."""
    if isinstance(raw, str):
        raw = raw.encode("latin-1")  # how numpy's Python 2 pickles carried the bytes
    if not isinstance(dtype, _NumpyDtype) or not isinstance(raw, bytes) \
            or len(raw) != dtype.dtype.itemsize:
        raise ValueError("malformed numpy scalar")
    return np.frombuffer(raw, dtype.dtype)[0].item()


# ---------------------------------------------------------------------------------------------
# The restricted unpickler and the allow-lists

class _Global:
    """A table entry for a function: callable, but BUILD on it fails (a plain function would let a
    pickle set its `__defaults__`)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)

    def __setstate__(self, state):
        raise ValueError("BUILD on a function is not part of any torch format")


def _storage_globals() -> dict:
    return {("torch", n): _StorageType(n, np.dtype(c)) for n, c in _STORAGE_CODES.items()}


def _tensor_globals() -> dict:
    """What `torch.save(state_dict)` files use (zip data.pkl and the legacy object pickle)."""
    return {
        **_storage_globals(),
        ("torch._utils", "_rebuild_tensor_v2"): _Global(_rebuild_tensor_v2),
        ("torch._utils", "_rebuild_parameter"): _Global(_rebuild_parameter),
        ("torch._utils", "_rebuild_parameter_with_state"): _Global(_rebuild_parameter),
        ("collections", "OrderedDict"): collections.OrderedDict,  # state_dict, hook dicts
    }


def _edm_globals(path: Path) -> dict:
    """What NVlabs/edm network pickles use (spec section 1.6), on top of `_tensor_globals`."""

    def reconstruct_persistent_obj(meta):
        # Upstream exec()s meta['module_src'] to rebuild the class; we keep class name and state.
        if not isinstance(meta, dict) or meta.get("type") != "class":
            raise ValueError("persistent object meta must be a dict with type 'class'")
        return ModuleRecord(meta.get("class_name"), meta.get("state"))

    def load_from_bytes(blob):
        if not isinstance(blob, bytes):
            raise ValueError("a storage blob must be bytes")
        storage, _ = _read_legacy(blob, path, _storage_globals(), "a storage blob of an EDM pickle")
        if not isinstance(storage, _Storage):
            raise ValueError(f"a storage blob holds a {type(storage).__name__}, not a storage")
        return storage

    containers = "torch.nn.modules.container"
    return {
        **_tensor_globals(),
        ("torch_utils.persistence", "_reconstruct_persistent_obj"):
            _Global(reconstruct_persistent_obj),
        ("torch.storage", "_load_from_bytes"): _Global(load_from_bytes),
        (containers, "ModuleDict"): _container("ModuleDict"),  # enc, dec
        (containers, "ModuleList"): _container("ModuleList"),
        (containers, "Sequential"): _container("Sequential"),
        ("numpy.core.multiarray", "scalar"): _Global(_numpy_scalar),  # written by numpy < 2
        ("numpy._core.multiarray", "scalar"): _Global(_numpy_scalar),  # written by numpy >= 2
        ("numpy", "dtype"): _NumpyDtype,
    }


class _RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose globals come only from `allowed`, and whose persistent ids (torch's
    storage references) go to `storages`, if given."""

    def __init__(self, file, path: Path, allowed: dict, what: str,
                 storages: Callable | None = None):
        super().__init__(file, encoding="utf-8")  # what torch.load passes for Python 2 strings
        self._path, self._allowed, self._what, self._storages = path, allowed, what, storages

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            hint = ""
            if (module, name) in _edm_globals(self._path):
                hint = " It looks like an NVlabs/edm network pickle: read it with read_edm_pickle."
            raise UnsafePickleError(
                f"{self._path}: refused to load the global {module}.{name} while reading "
                f"{self._what}: it is not on jaxdiff's allow-list, so the file is not a format "
                f"jaxdiff imports (or it is malicious). Nothing it names was imported or called."
                f"{hint}") from None

    def persistent_load(self, pid):
        if self._storages is None:
            raise ValueError(f"unexpected persistent id {pid!r:.80} in {self._what}")
        return self._storages(pid)


def _plain_pickle(f, path, what):
    """One pickle that may use no globals at all (magic number, version, sys info, key list)."""
    return _RestrictedUnpickler(f, path, {}, what).load()


def _read_legacy(buf: bytes, path: Path, allowed: dict, what: str) -> tuple[Any, int]:
    """Read a legacy torch.save stream from `buf`; returns (object, end offset).

    The storage bytes come after the object pickle, so it is unpickled twice: the first pass
    learns each storage's type and size (tensors come out as `_UNREAD`), the bytes are then taken
    as zero-copy views on `buf`, and the second pass rebuilds the tensors from them."""
    f = io.BytesIO(buf)
    if _plain_pickle(f, path, what) != MAGIC_NUMBER:
        raise ValueError("bad magic number: not a torch.save file")
    if (version := _plain_pickle(f, path, what)) != LEGACY_PROTOCOL:
        raise ValueError(f"legacy torch.save protocol {version!r:.40}, expected {LEGACY_PROTOCOL}")
    _plain_pickle(f, path, what)  # sys info; torch ignores it too (legacy bytes are little-endian)
    start = f.tell()
    storages: dict[str, _Storage] = {}

    def storage(pid):
        stype, key, numel, view = _storage_from_pid(pid)
        root = storages.setdefault(key, _Storage(stype, numel))
        if root.type is not stype or root.numel != numel:
            raise ValueError(f"storage {key!r} is referenced with two types or sizes")
        if view is None:
            return root
        # Old PyTorch: a view of the root storage, (view_key, offset, size) in elements.
        if not (isinstance(view, tuple) and len(view) == 3
                and all(type(v) is int for v in view[1:])):
            raise ValueError(f"malformed storage view metadata {view!r:.80}")
        _, offset, size = view
        if offset < 0 or size < 0 or offset + size > numel:
            raise ValueError(f"storage view {view!r:.80} outside its storage of {numel} elements")
        return _Storage(stype, size, None if root.raw is None else root.raw[offset:offset + size])

    _RestrictedUnpickler(f, path, allowed, what, storage).load()
    keys = _plain_pickle(f, path, what)
    if not isinstance(keys, list) or sorted(keys) != sorted(storages):
        raise ValueError("the storage key list does not match the storages the object uses")
    pos, view = f.tell(), memoryview(buf)
    for key in keys:
        st = storages[key]
        if pos + 8 > len(buf):
            raise EOFError(f"storage {key!r}: file truncated")
        (count,) = struct.unpack_from("<q", buf, pos)
        end = pos + 8 + count * st.type.dtype.itemsize
        if count != st.numel or end > len(buf):
            raise ValueError(f"storage {key!r}: {count} elements recorded, {st.numel} expected, "
                             f"{len(buf) - pos - 8} bytes left")
        st.raw = np.frombuffer(view[pos + 8:end], st.type.dtype)
        pos = end
    f.seek(start)
    return _RestrictedUnpickler(f, path, allowed, what, storage).load(), pos


def _read_zip(path: Path, allowed: dict, what: str) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError("a torch.save zip has exactly one <prefix>/data.pkl record; "
                             f"found {sorted(pickles)[:4]}")
        prefix = pickles[0][: -len("data.pkl")]
        order = "<"
        if prefix + "byteorder" in names:
            order = {b"little": "<", b"big": ">"}.get(zf.read(prefix + "byteorder").strip())
            if order is None:
                raise ValueError("the byteorder record is neither 'little' nor 'big'")
        storages: dict[str, _Storage] = {}

        def storage(pid):
            stype, key, numel, view = _storage_from_pid(pid)
            if view is not None:
                raise ValueError("storage views do not occur in zip files")
            if key not in storages:
                name = f"{prefix}data/{key}"
                dtype = stype.dtype.newbyteorder(order) if stype.dtype.itemsize > 1 else stype.dtype
                if name not in names or zf.getinfo(name).file_size != numel * dtype.itemsize:
                    raise ValueError(f"record {name} is missing or is not {numel} x "
                                     f"{dtype.itemsize} bytes")
                storages[key] = _Storage(stype, numel, np.frombuffer(zf.read(name), dtype))
            if storages[key].type is not stype or storages[key].numel != numel:
                raise ValueError(f"storage {key!r} is referenced with two types or sizes")
            return storages[key]

        return _RestrictedUnpickler(io.BytesIO(zf.read(pickles[0])), path, allowed, what,
                                    storage).load()


@contextlib.contextmanager
def _reading(path: Path, what: str):
    """Any failure while parsing untrusted bytes becomes a CheckpointFormatError naming the file."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 (every parse error of a bad file lands here)
        raise CheckpointFormatError(
            f"{path}: cannot read it as {what} ({type(e).__name__}: {e}). The file is truncated, "
            f"corrupt, or not a format jaxdiff imports.") from e


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: no such file")
    return path


# ---------------------------------------------------------------------------------------------
# Public readers

def read_torch_file(path) -> Any:
    """The object a `torch.save` file holds (zip or legacy format), with tensors as numpy arrays.
    Only tensors, Parameters, OrderedDicts and plain Python data are allowed."""
    path, what = _existing(path), "a torch.save file"
    with _reading(path, what):
        with path.open("rb") as f:
            head = f.read(4)
        if head == _ZIP_MAGIC:
            return _read_zip(path, _tensor_globals(), what)
        return _read_legacy(path.read_bytes(), path, _tensor_globals(), what)[0]


def read_state_dict(path, key: str | None = None) -> dict[str, np.ndarray]:
    """`torch.save(module.state_dict())` files: {dotted name: array}, in the file's order.
    `key` picks a sub-dict first (e.g. 'state_dict' of a training checkpoint)."""
    path = _existing(path)
    obj = read_torch_file(path)
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointFormatError(f"{path}: has no key {key!r} (it holds {keys})")
        obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"{path}: holds a {type(obj).__name__}, not a state_dict "
                                    f"(a dict of tensors)")
    bad = [f"{k!r} ({type(v).__name__})" for k, v in obj.items()
           if not isinstance(k, str) or not isinstance(v, np.ndarray)]
    if bad:
        raise CheckpointFormatError(
            f"{path}: not a flat state_dict: {', '.join(bad[:5])} are not tensors. Pass key= to "
            f"pick a sub-dict, or use read_torch_file.")
    return dict(obj)


def read_edm_pickle(path) -> EDMSnapshot:
    """An NVlabs/edm network pickle (edm-*.pkl, network-snapshot-*.pkl), read without torch and
    without executing the embedded source. `state_dict(snapshot.ema)` gives its arrays."""
    path, what = _existing(path), "an NVlabs/edm network pickle"
    with _reading(path, what):
        buf = path.read_bytes()
        if buf[:4] == _ZIP_MAGIC:
            raise CheckpointFormatError(f"{path}: is a torch.save zip archive, not an EDM network "
                                        f"pickle; read it with read_state_dict")
        obj = _RestrictedUnpickler(io.BytesIO(buf), path, _edm_globals(path), what).load()
    if type(obj) is int and obj == MAGIC_NUMBER:
        raise CheckpointFormatError(f"{path}: is a legacy torch.save file, not an EDM network "
                                    f"pickle; read it with read_state_dict")
    if not isinstance(obj, dict) or not isinstance(obj.get("ema"), ModuleRecord):
        got = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointFormatError(f"{path}: not an EDM network pickle: expected a dict with an "
                                    f"'ema' network, got {got}")
    return EDMSnapshot(obj["ema"], obj.get("loss_fn"), obj.get("augment_pipe"),
                       obj.get("dataset_kwargs"), path)
