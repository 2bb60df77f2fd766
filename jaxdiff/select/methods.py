"""Class-balanced data selection: LCMat-S and the coreset baselines behind one interface.

    sel = select("lcmat_s", key, labels, num_classes=10, fraction=0.01,
                 embeddings=feats, logits=logits)
    sel.indices  # [M] int32 dataset indices, class 0's picks first, each class in pick order
    sel.weights  # [M] float32 per-sample loss weights (1 for unweighted methods)

Inputs are arrays produced by a trained selection model (the pipeline's job):
  embeddings `[N, D]`: penultimate features x (the last linear layer's input), eval-mode;
  logits `[N, C]`: that layer's outputs z = W x + b for the same samples;
  labels `[N]` int in [0, C); forgetting needs `correct [T, N]` bool (per-epoch correctness);
  GraNd accepts `[R, N, D]` / `[R, N, C]` from R independently trained models.

Every method is class-balanced (lcmat.md §4 `--balance True`): class c of size n_c gets
`round(fraction * n_c)` picks with Python's banker's rounding, as the references compute it
(lcmat.md §5, §10.7); a class that would get 0 picks is an error, not a silent skip.

Per-class work runs inside one jitted `lax.map` over classes (padded to the largest class, with
masks), so there is no host round-trip between classes. With a `mesh`, classes are spread over
its devices with `jax.shard_map` (the candidate-pool axis of DESIGN.md §2); results are identical.

| method      | inputs                  | weights          | reference                          |
|-------------|-------------------------|------------------|------------------------------------|
| uniform     | -                       | 1                | class-balanced random              |
| herding     | embeddings              | 1                | feature-mean matching (Welling)    |
| kcenter     | embeddings              | 1                | farthest-point, random first point |
| forgetting  | correct                 | 1                | most forgetting events (Toneva)    |
| grand       | embeddings, logits      | 1                | largest mean last-layer grad norm  |
| craig       | embeddings, logits      | cluster sizes    | facility location, -|g_i - g_j|    |
| gradmatch   | embeddings, logits      | NNLS weights*n_c | OMP on last-layer gradients        |
| lcmat_s     | embeddings, logits      | 1                | lcmat.md §3 (`--kernel worst`)     |

Gradient-based methods use the exact cross-entropy gradient; DeepCore's old softmax-before-CE
bug (lcmat.md §6) is available as `softmax_before_ce=True` for CRAIG, GradMatch and GraNd only
to reproduce old numbers.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdiff.distributed import to_host
from jaxdiff.random import as_key, sample_keys
from jaxdiff.select import features as F
from jaxdiff.select import greedy as G
from jaxdiff.sharding import put, replicate


class Selection(NamedTuple):
    """A class-balanced selection.

    indices: `[M]` int32 dataset indices; classes in order 0..C-1, each class's picks in the
      order the method chose them (greedy order; rank order for score methods).
    weights: `[M]` float32 per-sample weights for a weighted loss Σ w_i CE_i / Σ w_i
      (ones for unweighted methods; GradMatch weights may be 0 for some picks).
    info: host- and device-side diagnostics: `budgets [C]` and `class_sizes [C]` (numpy), and
      per-method per-class arrays (e.g. LCMat-S `max_distance [C]`).
    """

    indices: jax.Array
    weights: jax.Array
    info: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Validation, budgets and class tables (host side, before any work)
# ---------------------------------------------------------------------------------------------


def _check_fraction(fraction: Any) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
        raise TypeError(f"fraction must be a real number in (0, 1], got {fraction!r}")
    f = float(fraction)
    if not (0.0 < f <= 1.0):  # also rejects NaN
        raise ValueError(f"fraction must lie in (0, 1], got {fraction!r}")
    return f


def _check_labels(labels: Any, num_classes: Any) -> np.ndarray:
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) \
            or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array [N], got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"labels must lie in [0, {num_classes}) (num_classes={num_classes}); {bad.size} "
            f"do not, e.g. labels[{i}] = {labels[i]} (range seen: [{labels.min()}, "
            f"{labels.max()}])")
    return labels


def class_budgets(labels: Any, num_classes: int, fraction: float) -> np.ndarray:
    """Per-class budgets `round(fraction * n_c)` (Python's banker's rounding): `[C]` int64.

    Raises a ValueError naming the classes when a class is empty or its budget rounds to 0,
    with the smallest fraction that would select one sample of every class.
    """
    f = _check_fraction(fraction)
    labels = _check_labels(labels, num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise ValueError(f"classes {empty.tolist()} have no samples (num_classes={num_classes}, "
                         f"N={labels.size}): class-balanced selection needs every class")
    budgets = np.array([round(f * int(n)) for n in counts], np.int64)
    zero = np.flatnonzero(budgets == 0)
    if zero.size:
        c = int(zero[0])
        raise ValueError(
            f"fraction={fraction!r} selects 0 samples of class {c} (round({f!r} * {counts[c]}) "
            f"= 0){' and of classes ' + str(zero[1:].tolist()) if zero.size > 1 else ''}; "
            f"every class needs at least one: use fraction > 0.5 / {counts[zero].min()} "
            f"= {0.5 / counts[zero].min():.3g}")
    return budgets


class _Table(NamedTuple):
    index: np.ndarray  # [C', L] int32 dataset index of position p of class c (0 past the end)
    counts: np.ndarray  # [C'] int32 class sizes (0 for padding classes)
    budgets: np.ndarray  # [C'] int32 (0 for padding classes)
    num_classes: int  # C (C' >= C pads to a multiple of the device count)


def _class_table(labels: np.ndarray, num_classes: int, budgets: np.ndarray,
                 multiple: int = 1) -> _Table:
    order = np.argsort(labels, kind="stable")  # class-major, ascending dataset index in a class
    counts = np.bincount(labels, minlength=num_classes)
    starts = np.concatenate([[0], np.cumsum(counts)])
    length = int(counts.max())
    padded = -(-num_classes // multiple) * multiple
    index = np.zeros((padded, length), np.int32)
    for c in range(num_classes):
        index[c, :counts[c]] = order[starts[c]:starts[c + 1]]
    pad = padded - num_classes
    return _Table(
        index=index,
        counts=np.concatenate([counts, np.zeros(pad, np.int64)]).astype(np.int32),
        budgets=np.concatenate([budgets, np.zeros(pad, np.int64)]).astype(np.int32),
        num_classes=num_classes,
    )


def _as_float(name: str, x: Any, shape_desc: str, ndims: tuple[int, ...]) -> jax.Array:
    if x is None:
        raise ValueError(f"{name} is required ({shape_desc})")
    x = jnp.asarray(x)
    if x.ndim not in ndims:
        raise ValueError(f"{name} must be {shape_desc}, got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")
    return x.astype(jnp.float32)


def _check_rows(name: str, x: jax.Array, n: int, axis: int = 0) -> None:
    if x.shape[axis] != n:
        raise ValueError(f"{name} has {x.shape[axis]} samples (shape {x.shape}) but labels has "
                         f"{n}")


def _embeddings_logits(embeddings, logits, labels, num_classes, *, stacked=False):
    nd = (2, 3) if stacked else (2,)
    desc = "[N, D] (or [R, N, D])" if stacked else "[N, D]"
    x = _as_float("embeddings", embeddings, desc + " float", nd)
    z = _as_float("logits", logits, desc.replace("D", "C") + " float", nd)
    if x.ndim != z.ndim or x.shape[:-1] != z.shape[:-1]:
        raise ValueError(f"embeddings {x.shape} and logits {z.shape} must describe the same "
                         "samples")
    _check_rows("embeddings", x, labels.size, axis=x.ndim - 2)
    if z.shape[-1] != num_classes:
        raise ValueError(f"logits have {z.shape[-1]} classes but num_classes={num_classes}")
    return x, z


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def _check_nonneg(name: str, value: Any) -> float:
    v = float(value)
    if not (v >= 0.0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def _check_pos_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------------------
# The per-class runner
# ---------------------------------------------------------------------------------------------

# A kernel handles one class: kernel(config, params, data, valid, count, budget, label, key,
# max_budget) -> (positions [max_budget] int32 (-1 unused), weights [max_budget], info dict of
# scalars). `data` holds the class's rows of every dataset-indexed array (padded to L rows),
# `config` is hashable static configuration, `params` a pytree of traced hyperparameters.
Kernel = Callable[..., tuple[jax.Array, jax.Array, dict[str, jax.Array]]]


@functools.partial(
    jax.jit, static_argnames=("kernel", "config", "max_budget", "class_batch", "mesh", "axis"))
def run_classes(kernel, config, params, data, index, counts, budgets, keys, *,
                max_budget, class_batch, mesh, axis):
    """Run `kernel` on every class (a `lax.map` in groups of `class_batch`, classes sharded over
    `mesh` when given): dataset positions `[C, max_budget]` (-1 unused), weights, info."""
    labels = jnp.arange(index.shape[0], dtype=jnp.int32)

    def one(args):
        idx, n, k, c, key = args
        rows = jax.tree.map(lambda a: jnp.take(a, idx, axis=0), data)
        valid = jnp.arange(idx.shape[0]) < n
        pos, w, info = kernel(config, params, rows, valid, n, k, c, key, max_budget)
        glob = jnp.where(pos >= 0, idx[jnp.maximum(pos, 0)], -1)
        return glob, w.astype(jnp.float32), info

    def run(index, counts, budgets, labels, keys, params, data):
        return lax.map(one, (index, counts, budgets, labels, keys), batch_size=class_batch)

    if mesh is None:
        return run(index, counts, budgets, labels, keys, params, data)
    spec = P(axis)
    rep = jax.tree.map(lambda _: P(), (params, data))
    return jax.shard_map(run, mesh=mesh, in_specs=(spec,) * 5 + rep,
                         out_specs=spec, check_vma=False)(index, counts, budgets, labels, keys,
                                                          params, data)


class _Prepared(NamedTuple):
    """A validated per-class run: `run_classes(*args, **static)` does the work."""

    args: tuple  # (kernel, config, params, data, index, counts, budgets, keys)
    static: dict[str, Any]  # max_budget, class_batch, mesh, axis
    table: _Table
    budgets: np.ndarray  # [C] int64


def prepare_classes(kernel: Kernel, key, labels, num_classes, fraction, data, *, config=(),
                    params=None, class_batch=1, mesh=None, needs_key=False) -> _Prepared:
    """Validate the budgets, build the class table and the arguments of `run_classes`."""
    budgets = class_budgets(labels, num_classes, fraction)
    if key is None:
        if needs_key:
            raise ValueError("this selection method is random: pass a PRNG key "
                             "(jax.random.key(seed)) or an int seed")
        key = jax.random.key(0)  # deterministic methods ignore it
    key = as_key(key)
    labels = np.asarray(labels)
    axis = None
    multiple = 1
    if mesh is not None:
        if len(mesh.axis_names) != 1:
            raise ValueError(f"mesh must have one axis (classes are spread over it), got axes "
                             f"{mesh.axis_names}")
        axis = mesh.axis_names[0]
        multiple = mesh.shape[axis]
    table = _class_table(labels, num_classes, budgets, multiple)
    class_batch = _check_pos_int("class_batch", class_batch)
    keys = sample_keys(key, table.index.shape[0])  # class c uses fold_in(key, c)
    params = params if params is not None else {}
    per_class = (table.index, table.counts, table.budgets, keys)
    if mesh is not None:
        # Global arrays on the mesh (they may span several processes): the class axis split,
        # the pool's data and the parameters on every device.
        split = NamedSharding(mesh, P(axis))
        per_class = tuple(put(x, split) for x in per_class)
        params, data = replicate((params, data), mesh)
    args = (kernel, config, params, data, *map(jnp.asarray, per_class))
    static = dict(max_budget=int(table.budgets.max()), class_batch=class_batch, mesh=mesh,
                  axis=axis)
    return _Prepared(args, static, table, budgets)


def assemble_selection(prep: _Prepared, glob, w, info) -> Selection:
    """Keep positions 0..budget_c-1 of every class (each class fills them in order)."""
    table, c_num, k_max = prep.table, prep.table.num_classes, prep.static["max_budget"]
    flat = np.concatenate([c * k_max + np.arange(b) for c, b in
                           enumerate(table.budgets[:c_num])])
    # Classes computed on other processes' devices are gathered first.
    glob, w, info = jax.tree.map(
        lambda x: x if x.is_fully_addressable else jnp.asarray(to_host(x)), (glob, w, info))
    info = {k: v[:c_num] for k, v in info.items()}
    info.update(budgets=prep.budgets, class_sizes=table.counts[:c_num].astype(np.int64))
    return Selection(glob.reshape(-1)[flat].astype(jnp.int32), w.reshape(-1)[flat], info)


def _select_by_class(kernel: Kernel, key, labels, num_classes, fraction, data,
                     **kwargs) -> Selection:
    """Validate, build the class table, run `kernel` on every class, assemble a `Selection`."""
    prep = prepare_classes(kernel, key, labels, num_classes, fraction, data, **kwargs)
    return assemble_selection(prep, *run_classes(*prep.args, **prep.static))


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


def _ones(max_budget, budget):
    return (jnp.arange(max_budget) < budget).astype(jnp.float32)


def _uniform_kernel(config, params, data, valid, n, k, c, key, max_budget):
    score = jnp.where(valid, jax.random.uniform(key, valid.shape), -1.0)
    pos = lax.top_k(score, max_budget)[1].astype(jnp.int32)
    return jnp.where(jnp.arange(max_budget) < k, pos, -1), _ones(max_budget, k), {}


def _score_kernel(config, params, data, valid, n, k, c, key, max_budget):
    """Top-`k` scores, descending. Ties: lower index first, or uniformly random if config[0]."""
    (random_ties,) = config
    (score,) = data
    neg = jnp.where(valid, -score, jnp.inf)  # invalid rows sort last
    if random_ties:
        order = jnp.lexsort((jax.random.uniform(key, neg.shape), neg))
    else:
        order = jnp.argsort(neg, stable=True)
    pos = order[:max_budget].astype(jnp.int32)
    return jnp.where(jnp.arange(max_budget) < k, pos, -1), _ones(max_budget, k), {}


def _herding_kernel(config, params, data, valid, n, k, c, key, max_budget):
    (x,) = data
    pos = G.herding(x, k, max_budget=max_budget, valid=valid)
    return pos, _ones(max_budget, k), {}


def _kcenter_kernel(config, params, data, valid, n, k, c, key, max_budget):
    (x,) = data
    first = jax.random.randint(key, (), 0, jnp.maximum(n, 1))
    pos = G.k_center_greedy(x, first, k, max_budget=max_budget, valid=valid)
    return pos, _ones(max_budget, k), {}


def _fl_greedy(rows, n, k, valid, constant, greedy, block_size, max_budget):
    """Facility location with one of `_GREEDY` (all make the same picks in exact arithmetic)."""
    kw = dict(constant=constant, max_budget=max_budget, valid=valid)
    if greedy == "lazy_recompute":  # O(block_size * n) memory: rows recomputed from features
        return G.lazy_greedy(rows, n, k, block_size=block_size, **kw)
    d = G.distance_matrix(rows, n, block_size=block_size)
    if greedy == "naive":
        return G.naive_greedy(d, k, **kw)
    return G.lazy_greedy(lambda j: d[j], n, k, block_size=block_size, **kw)


def _self_zero(j, n, d):
    """Exact zero self-distance: the norm expansion leaves sqrt(round-off) on the diagonal."""
    return jnp.where(j[:, None] == jnp.arange(n)[None, :], 0.0, d)


def _craig_kernel(config, params, data, valid, n, k, c, key, max_budget):
    greedy, block_size, softmax_before_ce = config
    x, z = data
    length = x.shape[0]
    r = jnp.where(valid[:, None], F.ce_residual(z, c, softmax_before_ce=softmax_before_ce), 0.0)
    sq = F.kron_sq_norms(r, x)
    # Any constant >= every distance gives the same picks and clusters (lcmat.md §3,
    # "Equivalent view"); |g_i - g_j| <= |g_i| + |g_j| bounds them without an extra pass.
    const = 2.0 * jnp.sqrt(jnp.max(jnp.where(valid, sq, 0.0))) * (1.0 + 1e-3) + 1e-12

    def rows(j):
        return _self_zero(j, length, F.pairwise_kron_distances(r[j], x[j], sq[j], r, x, sq))

    res = _fl_greedy(rows, length, k, valid, const, greedy, block_size, max_budget)
    _, sizes = G.assign_to_selected(rows, res.indices, valid)
    return res.indices, sizes, {"evaluations": res.evaluations}


def _gradmatch_kernel(config, params, data, valid, n, k, c, key, max_budget):
    (softmax_before_ce,) = config
    x, z = data
    r = jnp.where(valid[:, None], F.ce_residual(z, c, softmax_before_ce=softmax_before_ce), 0.0)
    res = G.omp(r, x, k, max_budget=max_budget, valid=valid, lam=params["lam"])
    # The target is the class-mean gradient; scaling weights by n_c makes them count samples
    # (identical to fitting the class-sum gradient: ridge is equivariant to that rescaling).
    w = res.weights * n.astype(jnp.float32)
    return res.indices, w, {"relative_residual": res.relative_residual}


def lcmat_kernel(config, params, data, valid, n, k, c, key, max_budget):
    """LCMat-S's per-class kernel (the `Kernel` contract above)."""
    num_coords, greedy, reference_scaling, batch_size, block_size = config
    x, z = data
    length = x.shape[0]
    if reference_scaling:
        scale = F.reference_batch_scale(n, length, batch_size)
    else:
        scale = jnp.where(valid, 1.0 / batch_size, 0.0)
    r = F.ce_residual(z, c) * scale[:, None]
    a = F.ce_curvature(z) * scale[:, None]
    var = F.diag_hessian_variance(a, x, valid)
    coords = F.top_variance_coordinates(var, num_coords)
    hk = F.diag_hessian_coordinates(a, x, coords)  # [L, K]
    sq = F.kron_sq_norms(r, x)
    eps, const = params["eps"], params["constant"]

    def rows(j):
        dg = F.pairwise_kron_distances(r[j], x[j], sq[j], r, x, sq)
        dh = F.pairwise_l1_distances(hk[j], hk)  # never the reference's n x n x K broadcast
        return _self_zero(j, length, dg + eps * dh)

    res = _fl_greedy(rows, length, k, valid, const, greedy, block_size, max_budget)
    info = {"max_distance": res.max_distance, "evaluations": res.evaluations}
    return res.indices, _ones(max_budget, k), info


# ---------------------------------------------------------------------------------------------
# Public methods
# ---------------------------------------------------------------------------------------------

_GREEDY = ("naive", "lazy", "lazy_recompute")

# The checks the methods apply to their keyword options, by option name: `specs.select` runs
# them on a config's `select.options` before any work.
OPTION_CHECKS = {
    "greedy": lambda v: _check_choice("greedy", v, _GREEDY),
    "block_size": lambda v: _check_pos_int("block_size", v),
    "batch_size": lambda v: _check_pos_int("batch_size", v),
    "class_batch": lambda v: _check_pos_int("class_batch", v),
    "num_coords": lambda v: _check_pos_int("num_coords", v),
    "lam": lambda v: _check_nonneg("lam", v),
    "eps": lambda v: _check_nonneg("eps", v),
}


def uniform(key, labels, num_classes, fraction, *, class_batch=1, mesh=None) -> Selection:
    """Class-balanced uniform sampling without replacement; class c uses `fold_in(key, c)`."""
    _check_labels(labels, num_classes)
    n = np.asarray(labels).size
    return _select_by_class(_uniform_kernel, key, labels, num_classes, fraction,
                            (jnp.zeros((n,), jnp.float32),), class_batch=class_batch, mesh=mesh,
                            needs_key=True)


def herding(key, labels, num_classes, fraction, *, embeddings, class_batch=1,
            mesh=None) -> Selection:
    """Herding on embeddings `[N, D]` per class (see `greedy.herding`; `key` unused)."""
    labels = _check_labels(labels, num_classes)
    x = _as_float("embeddings", embeddings, "[N, D] float", (2,))
    _check_rows("embeddings", x, labels.size)
    return _select_by_class(_herding_kernel, key, labels, num_classes, fraction, (x,),
                            class_batch=class_batch, mesh=mesh)


def kcenter(key, labels, num_classes, fraction, *, embeddings, class_batch=1,
            mesh=None) -> Selection:
    """k-center greedy on embeddings `[N, D]` per class; the first pick of class c is uniform
    under `fold_in(key, c)` and counts towards the budget (DeepCore)."""
    labels = _check_labels(labels, num_classes)
    x = _as_float("embeddings", embeddings, "[N, D] float", (2,))
    _check_rows("embeddings", x, labels.size)
    return _select_by_class(_kcenter_kernel, key, labels, num_classes, fraction, (x,),
                            class_batch=class_batch, mesh=mesh, needs_key=True)


def forgetting_events(correct: Any) -> jax.Array:
    """Forgetting events per sample from per-epoch correctness `[T, N]` bool: `[N]` int32.

    An event is a transition from correct at epoch t-1 to incorrect at epoch t (Toneva et al.
    2019); DeepCore starts from "incorrect", so epoch 0 never counts.
    """
    correct = jnp.asarray(correct)
    if correct.ndim != 2:
        raise ValueError(f"correct must be [T, N] (per-epoch correctness), got shape "
                         f"{correct.shape}")
    if correct.dtype != jnp.bool_:
        if not jnp.issubdtype(correct.dtype, jnp.integer) or \
                bool(jnp.any((correct != 0) & (correct != 1))):
            raise TypeError("correct must be bool (or 0/1 integers)")
        correct = correct.astype(bool)
    return jnp.sum(correct[:-1] & ~correct[1:], axis=0, dtype=jnp.int32)


def forgetting(key, labels, num_classes, fraction, *, correct, unlearned_first=False,
               class_batch=1, mesh=None) -> Selection:
    """Most-forgotten samples per class (Toneva et al. 2019; DeepCore `Forgetting`).

    Args:
      correct: `[T, N]` bool, whether sample i was classified correctly when it was seen in
        epoch t of the selection model's training (record the training-mode prediction at each
        presentation, as DeepCore does). Must come from a model actually trained in this run, not
        from a cached one (lcmat.md §10.3: a cached model gives all-zero counts).
      unlearned_first: rank samples never classified correctly first (Toneva et al. treat them as
        forgotten infinitely often); DeepCore does not (default).
    Ties (e.g. all-zero counts) are broken uniformly at random with `fold_in(key, c)`, not by
    dataset order.
    """
    labels = _check_labels(labels, num_classes)
    events = forgetting_events(correct)
    _check_rows("correct", events[None], labels.size, axis=1)
    score = events.astype(jnp.float32)
    if unlearned_first:
        never = ~jnp.any(jnp.asarray(correct).astype(bool), axis=0)
        score = jnp.where(never, jnp.inf, score)
    return _select_by_class(_score_kernel, key, labels, num_classes, fraction, (score,),
                            config=(True,), class_batch=class_batch, mesh=mesh, needs_key=True)


def grand_scores(embeddings, logits, labels, *, softmax_before_ce=False) -> jax.Array:
    """GraNd score `mean_r |g_i^(r)|_2` of the last-layer gradient: `[N]` float32.

    `|g| = |r| sqrt(1 + |x|^2)` in closed form; embeddings/logits are `[N, *]` or `[R, N, *]`.
    """
    x = jnp.asarray(embeddings, jnp.float32)
    z = jnp.asarray(logits, jnp.float32)
    if x.ndim == 2:
        x, z = x[None], z[None]
    r = jax.vmap(lambda zz: F.ce_residual(zz, labels, softmax_before_ce=softmax_before_ce))(z)
    return jnp.mean(jnp.sqrt(jax.vmap(F.kron_sq_norms)(r, x)), axis=0)


def grand(key, labels, num_classes, fraction, *, embeddings, logits, softmax_before_ce=False,
          class_batch=1, mesh=None) -> Selection:
    """GraNd (Paul et al. 2021, DeepCore's last-layer variant): the samples with the largest
    mean gradient norm over R models (`[R, N, D]`/`[R, N, C]`, or one model), ties by index."""
    labels = _check_labels(labels, num_classes)
    x, z = _embeddings_logits(embeddings, logits, labels, num_classes, stacked=True)
    score = grand_scores(x, z, jnp.asarray(labels), softmax_before_ce=softmax_before_ce)
    return _select_by_class(_score_kernel, key, labels, num_classes, fraction, (score,),
                            config=(False,), class_batch=class_batch, mesh=mesh)


def craig(key, labels, num_classes, fraction, *, embeddings, logits, greedy="lazy",
          block_size=256, softmax_before_ce=False, class_batch=1, mesh=None) -> Selection:
    """CRAIG (Mirzasoleiman et al. 2020; DeepCore `Craig`): per class, facility location on
    similarities C - |g_i - g_j| of last-layer gradients; weights are the cluster sizes (the
    number of class samples whose nearest pick is this one; they sum to n_c).

    DeepCore returns 1 + cluster size; add 1 to reproduce it. Its constant C = max d + 1e-3 is
    replaced by a bound on the distances (picks and clusters do not depend on C >= max d).
    `greedy` as in `lcmat_s` (default "lazy", DeepCore's LazyGreedy).
    """
    labels = _check_labels(labels, num_classes)
    x, z = _embeddings_logits(embeddings, logits, labels, num_classes)
    config = (_check_choice("greedy", greedy, _GREEDY), _check_pos_int("block_size", block_size),
              bool(softmax_before_ce))
    return _select_by_class(_craig_kernel, key, labels, num_classes, fraction, (x, z),
                            config=config, class_batch=class_batch, mesh=mesh)


def gradmatch(key, labels, num_classes, fraction, *, embeddings, logits, lam=1.0,
              softmax_before_ce=False, class_batch=1, mesh=None) -> Selection:
    """GradMatch (Killamsetty et al. 2021; DeepCore `GradMatch`): per class, non-negative OMP
    matching the class-mean last-layer gradient (see `greedy.omp`), ridge `lam`.

    Weights are the NNLS coefficients times n_c (they count samples, like CRAIG's); picks whose
    coefficient is 0 are kept with weight 0 (DeepCore drops them). `lam` acts on per-sample
    gradients of the per-sample loss; DeepCore's gradients are divided by the batch size B (mean
    loss), so its `lam` corresponds to `lam * B**2` here. `info["relative_residual"]` is the
    per-class |b - A w| / |b|.
    """
    labels = _check_labels(labels, num_classes)
    x, z = _embeddings_logits(embeddings, logits, labels, num_classes)
    params = {"lam": jnp.float32(_check_nonneg("lam", lam))}
    return _select_by_class(_gradmatch_kernel, key, labels, num_classes, fraction, (x, z),
                            config=(bool(softmax_before_ce),), params=params,
                            class_batch=class_batch, mesh=mesh)


def lcmat_s(key, labels, num_classes, fraction, *, embeddings, logits, eps=0.01,
            num_coords=100, constant=10.0, greedy="naive", batch_size=128,
            reference_scaling=False, block_size=256, class_batch=1, mesh=None) -> Selection:
    """LCMat-S (Shin et al. 2023), exactly the official `--kernel worst` path (lcmat.md §3).

    Per class c, with per-sample last-layer CE gradients g and exact diagonal Hessians h
    (closed forms, `features`), both divided by the batch size as the reference's batch-mean
    loss does:
      1. keep the `num_coords` (K) coordinates of h with the largest variance over the class
         (ddof 0): h^K;
      2. s_ij = constant - |g_i - g_j|_2 - eps |h^K_i - h^K_j|_1;
      3. facility location by greedy, `round(fraction * n_c)` picks, unweighted.

    Args:
      embeddings: `[N, D]` penultimate features; logits: `[N, C]` (selection model in eval mode:
        the reference's train-mode BatchNorm quirk belongs to feature extraction).
      eps: curvature weight (scripts 0.01; the code's default flag is 0.05). Traced.
      num_coords: K (static). constant: the similarity constant C = 10 (traced). When C exceeds
        every distance the picks do not depend on it; `info["max_distance"] [C]` reports the
        largest d_ij per class to check that.
      greedy: "naive" (the reference scripts' NaiveGreedy on the stored n x n distances);
        "lazy" (lazy greedy on the stored distances: the same picks with far fewer gain
        evaluations, `info["evaluations"]`); "lazy_recompute" (lazy greedy recomputing distance
        rows from the features: no n x n matrix, O(block_size * n) memory, slower).
      batch_size: the reference's selection batch (128); every g and h is divided by it.
      reference_scaling: compatibility flag, off by default. On, sample i is divided by the size
        of *its* batch when the class is cut into batches of `batch_size` in dataset order, which
        inflates the last, short batch of every class (16x for CIFAR-10's last 8 samples) — the
        reference's BackPACK behaviour (lcmat.md §3 "Scaling quirk").
      block_size: similarity rows computed at once (memory ~ block_size * n * 4 bytes).
    """
    labels = _check_labels(labels, num_classes)
    x, z = _embeddings_logits(embeddings, logits, labels, num_classes)
    dim = num_classes * (x.shape[-1] + 1)
    num_coords = _check_pos_int("num_coords", num_coords)
    if num_coords > dim:
        raise ValueError(f"num_coords={num_coords} exceeds the {dim} last-layer parameters "
                         f"(C(D+1) = {num_classes} x {x.shape[-1] + 1})")
    constant = float(constant)
    if not (constant > 0 and math.isfinite(constant)):
        raise ValueError(f"constant must be a finite number > 0, got {constant!r}")
    config = (num_coords, _check_choice("greedy", greedy, _GREEDY), bool(reference_scaling),
              _check_pos_int("batch_size", batch_size), _check_pos_int("block_size", block_size))
    params = {"eps": jnp.float32(_check_nonneg("eps", eps)), "constant": jnp.float32(constant)}
    return _select_by_class(lcmat_kernel, key, labels, num_classes, fraction, (x, z),
                            config=config, params=params, class_batch=class_batch, mesh=mesh)


METHODS: dict[str, Callable[..., Selection]] = {
    "uniform": uniform,
    "herding": herding,
    "kcenter": kcenter,
    "forgetting": forgetting,
    "grand": grand,
    "craig": craig,
    "gradmatch": gradmatch,
    "lcmat_s": lcmat_s,
}


def get_method(name: str) -> Callable[..., Selection]:
    """The selection function called `name` (case-insensitive; '-' and '_' are equivalent)."""
    key = str(name).lower().replace("-", "_")
    if key not in METHODS:
        raise ValueError(f"unknown selection method {name!r}; valid names: "
                         f"{', '.join(sorted(METHODS))}")
    return METHODS[key]


def select(method: str, key, labels, num_classes: int, fraction: float,
           **inputs: Any) -> Selection:
    """`get_method(method)(key, labels, num_classes, fraction, **inputs)`.

    `key`: a typed PRNG key or an int seed; class c uses `fold_in(key, c)`. Required by the
    random methods (uniform, kcenter, forgetting's tie-breaking); others accept None.

    `inputs` are the method's arrays (embeddings, logits, correct) and hyperparameters; see each
    method. Unknown keyword arguments raise TypeError naming the method.
    """
    fn = get_method(method)
    try:
        import inspect
        inspect.signature(fn).bind(key, labels, num_classes, fraction, **inputs)
    except TypeError as e:
        raise TypeError(f"select({method!r}): {e}") from None
    return fn(key, labels, num_classes, fraction, **inputs)
