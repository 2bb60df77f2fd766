"""Expert trajectories for trajectory matching (MTT `buffer.py`; dd-common.md §8.1).

An expert is a classifier trained on the real training set with plain SGD (lr 0.01, no momentum,
no weight decay), batch 256 from a fresh permutation every epoch (the last, smaller batch is
masked, not dropped: PyTorch's `DataLoader` default), per-sample DSA on every batch, and a
parameter snapshot after every epoch: E + 1 snapshots (the init, then epochs 1..E).

Several experts train in ONE compiled program: their parameters are stacked (`init_pool`) and
every step runs the pool with `apply_pool`, each expert on its own minibatch and DSA draw. Expert
i's randomness depends only on i (init: `fold_in(init_key, i)`; epoch e: `fold_in(fold_in(
data_key, i), e)`, whose `fold_in(., 0)` draws the permutation and `fold_in(., s + 1)` step s's
DSA), so a pool of N gives the same experts as N single runs.

Storage: `ExpertStore`, one `.npy` file per expert (see its docstring for the layout). Why NumPy
files rather than Orbax: the distillation loop reads ONE snapshot pair (θ(t), θ(t + M)) per
iteration out of ~6.5 GB (100 ConvNet-D3 experts x 51 snapshots); a `[E+1, P]` `.npy` opened
with `mmap_mode='r'` reads exactly those two rows (2 x 1.28 MB) with no deserialisation, no
pytree template and no directory scan, and any tool (NumPy, PyTorch) can read it. Writes are
atomic (write to a temporary name, `os.replace`), so a crash never leaves a truncated file; and
because the experts use momentum-free SGD, the latest snapshot *is* the full training state, so
the per-epoch snapshots of an unfinished expert double as its resume checkpoint.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.flatten_util import ravel_pytree

from jaxdiff import data as jdata
from jaxdiff import distributed
from jaxdiff.batching import epoch_batches, num_batches, padded_batches
from jaxdiff.files import atomic_save_npy, atomic_savez, atomic_write_json
from jaxdiff.errors import MissingInputError, UserError
from jaxdiff.models.functional import apply_pool, init_pool, masked_cross_entropy

FORMAT = "jaxdiff-experts/1"
_EXPERT_RE = re.compile(r"^expert_(\d{5})\.npy$")
_EPOCH_RE = re.compile(r"^epoch_(\d{4})\.npy$")


class ExpertStore:
    """Expert trajectories on disk, loaded lazily by (expert, epoch).

    Layout of `root/`::

        meta.json                       {"format": "jaxdiff-experts/1", "num_params": P,
                                         "epochs": E, "param_paths": [...], "param_shapes": [...],
                                         "dtype": "float32", ...caller's fields (dataset, zca,
                                         model, lr, batch_size, dsa_strategy, seed, fingerprint)}
        expert_00000.npy                float32 [E + 1, P]: row e = flat parameters after e
        expert_00001.npy                epochs (row 0 = the initialisation), flattened with
        ...                             `jax.flatten_util.ravel_pytree` of the model's nnx.Param
                                        state (`trajectory.flat_student` uses the same order)
        partial/expert_00007/epoch_0003.npy   float32 [P]: snapshots of an expert still in
                                        training; merged into expert_00007.npy and deleted
                                        when it completes
        zca.npz                         (optional) the ZCA transform the experts were trained
                                        in: mean [D], whiten [D, D], inverse [D, D]

    Only complete experts (`expert_*.npy`) are visible to `load`/`segment`/`__len__`.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = os.path.abspath(os.fspath(root))
        path = os.path.join(self.root, "meta.json")
        if not os.path.exists(path):
            raise MissingInputError(f"no expert store at {self.root} (missing meta.json); "
                                    "create one with `jaxdiff experts` or ExpertStore.create")
        with open(path) as f:
            self.meta = json.load(f)
        if self.meta.get("format") != FORMAT:
            raise UserError(f"{path}: expert store format {self.meta.get('format')!r}, expected "
                            f"{FORMAT!r}; train the experts again with `jaxdiff experts`")
        self.num_params = int(self.meta["num_params"])
        self.epochs = int(self.meta["epochs"])
        self._mmaps: dict[int, np.ndarray] = {}

    # ----------------------------------------------------------------------------- creation
    @classmethod
    def create(cls, root: str | os.PathLike, *, num_params: int, epochs: int,
               meta: dict | None = None, exist_ok: bool = False) -> "ExpertStore":
        """Create (or, with `exist_ok`, reopen) a store for trajectories of `epochs` epochs.

        Reopening checks that the stored meta equals `num_params`, `epochs` and every key of
        `meta`; a mismatch raises ValueError naming the key (experts from another config).
        """
        root = os.path.abspath(os.fspath(root))
        if num_params < 1 or epochs < 1:
            raise ValueError(f"num_params and epochs must be >= 1, got {num_params}, {epochs}")
        full = {**json.loads(json.dumps(meta or {}, default=lambda o: np.asarray(o).tolist())),
                "format": FORMAT, "num_params": int(num_params), "epochs": int(epochs),
                "dtype": "float32"}
        path = os.path.join(root, "meta.json")
        # process 0 decides: another process could already see the meta.json written below
        if distributed.agree(os.path.exists(path)):
            if not exist_ok:
                raise FileExistsError(f"{root} already holds an expert store; pass --resume to "
                                      "continue it, or choose another directory")
            store = cls(root)
            for k, v in full.items():
                if store.meta.get(k) != v:
                    raise ValueError(f"expert store {root} was made with {k}={store.meta.get(k)!r}"
                                     f", this run has {k}={v!r}")
            return store
        os.makedirs(root, exist_ok=True)
        atomic_write_json(path, full, sort_keys=True)
        distributed.barrier("expert_store_created")   # every process may now open it
        return cls(root)

    # ----------------------------------------------------------------------------- paths
    def path(self, expert: int) -> str:
        return os.path.join(self.root, f"expert_{int(expert):05d}.npy")

    def _partial_dir(self, expert: int) -> str:
        return os.path.join(self.root, "partial", f"expert_{int(expert):05d}")

    # ----------------------------------------------------------------------------- reading
    def completed(self) -> list[int]:
        """Sorted ids of complete experts."""
        return sorted(int(m.group(1)) for f in os.listdir(self.root)
                      if (m := _EXPERT_RE.match(f)))

    def __len__(self) -> int:
        return len(self.completed())

    def is_complete(self, expert: int) -> bool:
        return os.path.exists(self.path(expert))

    def trajectory(self, expert: int) -> np.ndarray:
        """Memory-mapped `[E + 1, P]` float32 trajectory of a complete expert (lazy)."""
        expert = int(expert)
        if expert not in self._mmaps:
            if not self.is_complete(expert):
                raise KeyError(f"expert {expert} is not in {self.root} (complete experts: "
                               f"{self.completed()[:10]}{'...' if len(self) > 10 else ''})")
            arr = np.load(self.path(expert), mmap_mode="r")
            if arr.shape != (self.epochs + 1, self.num_params):
                raise ValueError(f"{self.path(expert)} has shape {arr.shape}, expected "
                                 f"{(self.epochs + 1, self.num_params)}")
            self._mmaps[expert] = arr
        return self._mmaps[expert]

    def load(self, expert: int, epoch: int) -> np.ndarray:
        """Flat parameters `[P]` float32 of `expert` after `epoch` epochs (reads one row)."""
        if not 0 <= int(epoch) <= self.epochs:
            raise ValueError(f"epoch must be in 0..{self.epochs}, got {epoch}")
        return np.array(self.trajectory(expert)[int(epoch)])

    def segment(self, expert: int, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(θ(start), θ(start + length)): the start and target of one trajectory-matching step."""
        if start < 0 or length < 1 or start + length > self.epochs:
            raise ValueError(f"segment start={start}, length (expert_epochs)={length} does not fit "
                             f"in {self.epochs} stored epochs (need start + length <= "
                             f"{self.epochs}; lower max_start_epoch or expert_epochs)")
        return self.load(expert, start), self.load(expert, start + length)

    def save_zca(self, zca) -> None:
        atomic_savez(os.path.join(self.root, "zca.npz"), mean=zca.mean, whiten=zca.whiten,
                    inverse=zca.inverse)

    def load_zca(self):
        """The stored `jaxdiff.data.ZCA`, or None when the experts were trained without ZCA."""
        path = os.path.join(self.root, "zca.npz")
        if not os.path.exists(path):
            return None
        from jaxdiff.data import ZCA
        with np.load(path) as z:
            return ZCA(z["mean"], z["whiten"], z["inverse"])

    def check(self, **expected) -> None:
        """Raise `UserError` (a ValueError) if a meta field differs, e.g.
        `check(dataset="digits", zca=False)`."""
        for k, v in expected.items():
            if k not in self.meta:
                raise UserError(f"expert store {self.root} does not record {k!r}")
            if self.meta[k] != v:
                raise UserError(f"expert store {self.root} has {k}={self.meta[k]!r}, but "
                                f"{k}={v!r} was expected: train experts for this setting with "
                                "`jaxdiff experts`")

    # ----------------------------------------------------------------------------- writing
    def save_trajectory(self, expert: int, trajectory) -> None:
        """Write a complete `[E + 1, P]` trajectory atomically."""
        trajectory = np.asarray(trajectory, np.float32)
        if trajectory.shape != (self.epochs + 1, self.num_params):
            raise ValueError(f"trajectory has shape {trajectory.shape}, expected "
                             f"{(self.epochs + 1, self.num_params)}")
        atomic_save_npy(self.path(expert), trajectory)
        self._mmaps.pop(int(expert), None)

    def save_snapshot(self, expert: int, epoch: int, flat) -> None:
        """Write one in-progress snapshot (`[P]` after `epoch` epochs) atomically."""
        flat = np.asarray(flat, np.float32)
        if flat.shape != (self.num_params,):
            raise ValueError(f"snapshot has shape {flat.shape}, expected ({self.num_params},)")
        if not 0 <= epoch <= self.epochs:
            raise ValueError(f"epoch must be in 0..{self.epochs}, got {epoch}")
        d = self._partial_dir(expert)
        os.makedirs(d, exist_ok=True)
        atomic_save_npy(os.path.join(d, f"epoch_{int(epoch):04d}.npy"), flat)

    def partial_epochs(self, expert: int) -> list[int]:
        """Epochs with an in-progress snapshot of `expert` (sorted; [] if none)."""
        d = self._partial_dir(expert)
        if not os.path.isdir(d):
            return []
        return sorted(int(m.group(1)) for f in os.listdir(d) if (m := _EPOCH_RE.match(f)))

    def resume_epoch(self, expert: int) -> int | None:
        """The epoch an expert can resume from: E if complete, else the last epoch e such that
        snapshots 0..e all exist, else None (start from scratch)."""
        if self.is_complete(expert):
            return self.epochs
        have = set(self.partial_epochs(expert))
        e = -1
        while e + 1 in have:
            e += 1
        return e if e >= 0 else None

    def load_snapshot(self, expert: int, epoch: int) -> np.ndarray:
        """A snapshot of an expert, complete or in progress."""
        if self.is_complete(expert):
            return self.load(expert, epoch)
        path = os.path.join(self._partial_dir(expert), f"epoch_{int(epoch):04d}.npy")
        if not os.path.exists(path):
            raise KeyError(f"no snapshot of expert {expert} at epoch {epoch} in {self.root}")
        return np.load(path)

    def finalize(self, expert: int) -> None:
        """Merge snapshots 0..E of an in-progress expert into `expert_#####.npy`, atomically
        (process 0 only, like every file write)."""
        if not distributed.is_main():
            return
        if self.resume_epoch(expert) != self.epochs:
            raise ValueError(f"expert {expert} has snapshots up to epoch "
                             f"{self.resume_epoch(expert)}, not {self.epochs}")
        if not self.is_complete(expert):
            rows = [self.load_snapshot(expert, e) for e in range(self.epochs + 1)]
            self.save_trajectory(expert, np.stack(rows))
        shutil.rmtree(self._partial_dir(expert), ignore_errors=True)
        try:
            os.rmdir(os.path.join(self.root, "partial"))   # only succeeds when empty
        except OSError:
            pass


# --------------------------------------------------------------------------------- training
class ExpertTrainer(NamedTuple):
    """Pure functions that train a pool of experts in flat-parameter form.

    init(expert_ids [N] int) -> flat [N, P]: initial parameters, expert i from
      `fold_in(init_key, i)`.
    epoch(flat [N, P], expert_ids [N], epoch int, images, labels) -> (flat [N, P], loss [N]):
      one epoch of SGD for every expert in one program, the training split on the device
      (jitted; `epoch` is traced, so no recompiles).
    rows_of(expert_ids [N]) -> rows(t) -> [N, b] int32: the training rows of step t of the
      experts (t = epoch * steps_per_epoch + s; jittable, for `feeding.HostBatches`).
    step(flat, expert_ids, t, x [N, b, ...], y [N, b]) -> (flat, loss [N]): step t on its batch
      `images[rows(t)]` read on the host; `steps_per_epoch` of them equal one `epoch`.
    accuracy(flat [N, P], images, labels) -> [N]: accuracy of every expert (jitted, batched).
    unravel: flat [P] -> nnx.State of parameters; num_params: P.
    """

    init: Callable
    epoch: Callable
    rows_of: Callable
    step: Callable
    steps_per_epoch: int
    accuracy: Callable
    unravel: Callable
    num_params: int


def make_expert_trainer(
    make_model: Callable[[nnx.Rngs], nnx.Module],
    *,
    init_key: jax.Array,
    data_key: jax.Array,
    num_train: int,
    lr: float = 0.01,
    batch_size: int = 256,
    augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    transform: Callable[[jax.Array], jax.Array] | None = None,
    eval_batch: int = 500,
) -> ExpertTrainer:
    """Build the expert-training functions (dd-common.md §8.1).

    Args:
      make_model: `make_model(nnx.Rngs(key)) -> classifier` (e.g. a partial of ConvNet). Models
        with non-parameter state (BatchNorm statistics) are rejected: the snapshots, like MTT's,
        hold parameters only.
      init_key, data_key: expert i initialises from `fold_in(init_key, i)`; its epoch e draws
        from `fold_in(fold_in(data_key, i), e)`.
      num_train: number of training images (static: fixes the batch schedule's shape).
      lr: SGD learning rate (no momentum, no weight decay) — `lr_teacher` = 0.01.
      batch_size: 256 in the references.
      augment: per-sample DSA `augment(key, images) -> images`, or None.
      transform: applied to each gathered batch before augmentation, e.g. uint8 -> normalised
        float32, so the training set can stay uint8 on the device; None = identity.
    """
    graphdef, params1, rest1 = init_pool(make_model, jax.random.split(init_key, 1)[:1],
                                         nnx.Param, ...)
    if any(np.size(x) > 0 for x in jax.tree.leaves(rest1)):
        raise ValueError("expert training supports models whose only arrays are nnx.Params "
                         "(e.g. ConvNet with instance norm), not BatchNorm statistics")
    _, unravel = ravel_pytree(jax.tree.map(lambda x: x[0], params1))
    num_params = int(sum(np.prod(x.shape[1:]) for x in jax.tree.leaves(params1)))
    transform = transform or (lambda x: x)

    def init(expert_ids):
        keys = jax.vmap(lambda i: jax.random.fold_in(init_key, i))(jnp.asarray(expert_ids))
        _, params, _ = init_pool(make_model, keys, nnx.Param, ...)
        return jax.vmap(lambda p: ravel_pytree(p)[0])(params)

    def logits_pool(flat, x, in_axes):
        params = jax.vmap(unravel)(flat)
        rest = jax.tree.map(lambda r: jnp.broadcast_to(r, (flat.shape[0], *r.shape[1:])), rest1)
        return apply_pool(graphdef, (params, rest), x, in_axes=in_axes)[0]

    def pool_loss(flat, x, y, w):
        # Σ over experts of each expert's mean CE: the gradient w.r.t. the stacked flat
        # parameters is every expert's own gradient.
        per_expert = jax.vmap(masked_cross_entropy)(logits_pool(flat, x, 0), y, w)
        return jnp.sum(per_expert), per_expert

    def epoch_keys(expert_ids, epoch_idx):  # [N] keys of the experts' epoch
        return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(data_key, i),
                                                     epoch_idx))(jnp.asarray(expert_ids))

    def epoch_rows(expert_keys):  # [N, S, b] rows and padding weights of an epoch
        return jax.vmap(lambda k: epoch_batches(jax.random.fold_in(k, 0), num_train,
                                                batch_size))(expert_keys)

    def sgd(flat, expert_keys, s, x, y, w):
        x = transform(x)                                          # [N, b, H, W, C]
        if augment is not None:
            x = jax.vmap(lambda k, xx: augment(jax.random.fold_in(k, s + 1), xx))(expert_keys, x)
        grads, losses = jax.grad(pool_loss, has_aux=True)(flat, x, y, w)
        return flat - lr * grads, losses

    @jax.jit
    def epoch(flat, expert_ids, epoch_idx, images, labels):
        expert_keys = epoch_keys(expert_ids, epoch_idx)
        idx, w = epoch_rows(expert_keys)
        flat, losses = jax.lax.scan(
            lambda f, s: sgd(f, expert_keys, s, images[idx[:, s]], labels[idx[:, s]], w[:, s]),
            flat, jnp.arange(idx.shape[1]))
        return flat, jnp.mean(losses, axis=0)

    steps_per_epoch, b = num_batches(num_train, batch_size)
    # the padding weights depend on the step only (the last batch's tail), not on the draw
    weights = epoch_batches(jax.random.key(0), num_train, batch_size)[1]     # [S, b]

    def rows_of(expert_ids):
        ids = jnp.asarray(expert_ids)

        def rows(t):
            e, s = t // steps_per_epoch, t % steps_per_epoch
            return epoch_rows(epoch_keys(ids, e))[0][:, s]
        return rows

    @functools.partial(jax.jit, donate_argnums=0)
    def step(flat, expert_ids, t, x, y):
        e, s = t // steps_per_epoch, t % steps_per_epoch
        w = jnp.broadcast_to(weights[s], y.shape)
        return sgd(flat, epoch_keys(expert_ids, e), s, x, y, w)

    @jax.jit
    def accuracy(flat, images, labels):
        xs, ys = padded_batches(images, eval_batch), padded_batches(labels, eval_batch, fill=-1)

        def count(_, xy):
            x, y = xy
            pred = jnp.argmax(logits_pool(flat, transform(x), None), -1)   # [N, b]
            return None, jnp.sum(pred == y[None], axis=1)

        _, correct = jax.lax.scan(count, None, (xs, ys))
        return jnp.sum(correct, axis=0) / images.shape[0]

    return ExpertTrainer(init, epoch, rows_of, step, steps_per_epoch, accuracy, unravel,
                         num_params)


def param_layout(make_model: Callable[[nnx.Rngs], nnx.Module], key: jax.Array) -> dict[str, Any]:
    """`{"param_paths": [...], "param_shapes": [...]}` in flat order, for `ExpertStore` meta."""
    model = nnx.eval_shape(lambda: make_model(nnx.Rngs(key)))
    params = nnx.state(model, nnx.Param)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    def name(path):
        parts = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        return "/".join(p for p in parts if p not in ("value", ".value"))

    return {"param_paths": [name(path) for path, _ in leaves],
            "param_shapes": [list(x.shape) for _, x in leaves]}


class ExpertData(NamedTuple):
    """The arrays experts train and are tested on, on the host, in the space they train in.

    Without ZCA the training images stay uint8 (`[N, H, W, C]`: a memory map of the data cache,
    read a batch at a time) and `transform` normalises each batch on the device; with ZCA (MTT
    `--zca`: [0, 1] pixels whitened with the train-set ZCA, dd-common.md §2) they are float32 in
    ZCA space and `transform` is None.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    zca: Any
    transform: Callable | None


def expert_data(train, test, *, zca: bool = False, zca_reg: float = 0.1) -> ExpertData:
    """`ExpertData` of a train and a test `jaxdiff.data.Dataset` (uint8 images, labels, info)."""
    if zca:
        z = jdata.fit_zca(train.images.astype(np.float32) / 255.0, reg=zca_reg)
        tx = jdata.zca_apply(z, jnp.asarray(train.images, jnp.float32) / 255.0)
        ex = jdata.zca_apply(z, jnp.asarray(test.images, jnp.float32) / 255.0)
        return ExpertData(np.asarray(tx), np.asarray(train.labels, np.int32), np.asarray(ex),
                          np.asarray(test.labels, np.int32), z, None)
    mean = jnp.asarray(train.info.mean, jnp.float32)
    std = jnp.asarray(train.info.std, jnp.float32)
    transform = functools.partial(jdata.normalize_with, mean=mean, std=std)
    return ExpertData(train.images, np.asarray(train.labels, np.int32), np.asarray(test.images),
                      np.asarray(test.labels, np.int32), None, transform)
