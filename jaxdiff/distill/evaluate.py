"""Train on a (synthetic or real-subset) labelled set, test on the real test split.

The protocol of dd-common.md §11 (DC/DSA/DM/MTT evaluation), N independent runs in ONE compiled
program:

* SGD, momentum 0.9, coupled weight decay 5e-4 added to the gradient *before* momentum
  (PyTorch semantics: `optax.add_decayed_weights` before the momentum trace);
* E + 1 epochs (epochs 0..E inclusive); after finishing epoch index E//2 + 1 the learning rate is
  multiplied by 0.1 and the momentum buffers are reset (the references rebuild the optimiser);
  for E = 300 that is 152 epochs at lr, then 149 at 0.1·lr;
* batch 256 from a fresh permutation every epoch; the last, smaller batch is a step of its own
  size (PyTorch's `DataLoader(drop_last=False)`: nothing padded, nothing dropped); per-sample DSA
  on every batch when an augmentation is given;
* the training set is fixed (decoded and detached once); test accuracy is measured on the
  whole test split at the end ("final", the default) and optionally after chosen epochs, from
  which "best over checkpoints" — the references' test-set model selection — can be read, and
  is labelled as such.

How the runs share the hardware (`run_mode`): the runs are split over the global devices (all
processes) under `jax.shard_map` (`run_layout` says how many devices and runs per device), and
each device trains its share either

* ``"vmap"``: all at once, batched — right on accelerators, where one run rarely fills the chip;
* ``"sequential"``: one after another (`lax.map`) inside the same compiled program — right on
  XLA:CPU, which lowers a convolution whose weights are batched over runs to a *grouped*
  convolution (`feature_group_count` = runs) that runs 2.5-7x slower than the runs' plain
  convolutions one after another, and turns DSA's `lax.switch` over augmentation families into
  all six families computed and selected (benchmarks/results/evaluate_cpu.md);
* ``"auto"`` (default): "sequential" when the devices are CPUs, "vmap" otherwise.

Run r depends only on `fold_in(key, r)`. A run trained sequentially executes the same program
as when it is the only run, so its numbers are bitwise those of `num_runs=1`; vmapped runs
(and a different number of runs per device) agree with them up to XLA's float arithmetic for
the batched kernels.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from jaxdiff.batching import num_batches
from jaxdiff.distributed import to_host
from jaxdiff.models.functional import apply, masked_cross_entropy
from jaxdiff.random import sample_keys
from jaxdiff.sharding import all_cpu, devices_by_process, put, replicate
from jaxdiff.xla_options import compiler_options_for

RUNS_AXIS = "runs"
RUN_MODES = ("auto", "vmap", "sequential")


class EvalResult(NamedTuple):
    """Accuracies (fractions in [0, 1]) of `num_runs` independently trained networks.

    accuracy: `[R]` test accuracy after the last epoch (the default figure).
    accuracy_at: `[R, K]` test accuracy after each of `eval_epochs` completed epochs.
    eval_epochs: the K epoch counts of `accuracy_at`.
    train_loss: `[R]` mean training loss of the last epoch.
    """

    accuracy: np.ndarray
    accuracy_at: np.ndarray
    eval_epochs: tuple[int, ...]
    train_loss: np.ndarray

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracy))

    @property
    def std(self) -> float:
        return float(np.std(self.accuracy))

    @property
    def best_over_checkpoints(self) -> float:
        """Max over `eval_epochs` of the mean accuracy — test-set model selection, as MTT/DDiF
        report it (dd-common.md §11.3). Not the default figure."""
        if not self.eval_epochs:
            return self.mean
        return float(max(self.accuracy_at.mean(axis=0).max(), self.mean))

    def summary(self) -> str:
        return f"{100 * self.mean:.2f} ± {100 * self.std:.2f} % (final epoch, {len(self.accuracy)} runs)"


def decay_epoch(epochs: int) -> int:
    """Number of epochs trained at the initial learning rate: E//2 + 2 (dd-common.md §11.2)."""
    return epochs // 2 + 2


def train_and_test(
    key: jax.Array,
    train_images: jax.Array,
    train_labels: jax.Array,
    test_images: jax.Array,
    test_labels: jax.Array,
    *,
    make_model: Callable[[nnx.Rngs], nnx.Module],
    num_runs: int = 5,
    epochs: int = 300,
    lr: float | jax.Array = 0.01,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    eval_epochs: Sequence[int] = (),
    test_batch_size: int = 200,
    progress: bool = False,
    train_weights: jax.Array | None = None,
    devices: Sequence[jax.Device] | None = None,
    run_mode: str = "auto",
) -> EvalResult:
    """Train `num_runs` fresh networks on `(train_images, train_labels)`, test each on the test set.

    Args:
      key: PRNG key; run r uses `fold_in(key, r)` (init and data order), so results for run r do
        not depend on `num_runs`.
      train_images: `[N, H, W, C]` float32, already normalised (or ZCA'd) and detached.
      train_labels: `[N]` int.
      test_images, test_labels: `[M, H, W, C]`, `[M]`, same space as the training images.
      make_model: builds a fresh Flax NNX classifier from `nnx.Rngs` (called under `vmap`).
      num_runs: R, the number of independently initialised networks.
      epochs: E; E + 1 epochs are trained (dd-common.md §11.2).
      lr: initial learning rate (traced: changing it does not recompile; MTT passes learned α).
      augment: `augment(key, images) -> images`, per-sample, applied to every training batch
        (e.g. DSA); None for no augmentation.
      eval_epochs: completed-epoch counts after which to also measure test accuracy (each costs a
        full test pass).
      test_batch_size: test images per forward pass and run (memory: the runs in flight x batch
        x the largest activation, e.g. 200 x 0.5 MiB for ConvNet-D3 on 32x32 images).
      progress: show a tqdm bar over epochs: a host callback in the compiled loop, at most ~100
        ticks per run; leave it off where nobody watches (`pipelines.evaluate` does so when
        stderr is not a terminal).
      train_weights: optional `[N]` non-negative per-sample loss weights (coreset weights of
        CRAIG / GradMatch); each batch's loss is the weighted mean Σ w·CE / Σ w. None = all 1.
      devices: the devices to split the runs over (default: all global devices; see
        `run_layout`). Every process must call this with the same arguments.
      run_mode: how each device trains its runs: "vmap", "sequential" or "auto" (module doc,
        `choose_run_mode`). Per-run results agree whichever is chosen (bitwise for
        "sequential" against a lone run; up to float rounding for "vmap").

    Returns:
      EvalResult with final accuracies `[R]`.
    """
    # On the host: the set may live on another mesh (a distillation's, across processes), and
    # every run needs all of it.
    train_images, train_labels, test_images, test_labels = (
        np.asarray(a) for a in to_host((train_images, train_labels, test_images, test_labels)))
    train_weights = _check_inputs(train_images, train_labels, test_images, train_weights,
                                  num_runs)
    total_epochs = epochs + 1
    bad = [e for e in eval_epochs if not 1 <= e <= total_epochs]
    if bad:
        raise ValueError(f"eval_epochs {bad} outside 1..{total_epochs} (E + 1 = {total_epochs} epochs)")
    eval_epochs = tuple(sorted(set(int(e) for e in eval_epochs)))

    devices, per_device = run_layout(num_runs, devices)
    mode = choose_run_mode(run_mode, devices)
    mesh = jax.make_mesh((len(devices),), (RUNS_AXIS,), axis_types=(AxisType.Auto,),
                         devices=devices)
    run = _compiled_protocol(make_model, epochs, batch_size, momentum, weight_decay, augment,
                             eval_epochs, test_batch_size, train_images.shape[0],
                             test_images.shape[0], progress, mesh, mode)
    # Padding runs (beyond num_runs) are trained and dropped: run r's key never depends on them.
    keys = put(sample_keys(key, len(devices) * per_device), NamedSharding(mesh, P(RUNS_AXIS)))
    data = replicate((train_images, train_labels.astype(np.int32), test_images,
                      test_labels.astype(np.int32), np.float32(to_host(lr)), train_weights), mesh)
    ticks = total_epochs * (per_device if mode == "sequential" and per_device > 1 else 1)
    with _progress_bar(ticks, f"evaluate ({num_runs} runs)", progress):
        final_acc, acc_per_epoch, last_loss = run(keys, *data)
        jax.block_until_ready(final_acc)
    final_acc, acc_per_epoch, last_loss = (a[:num_runs] for a in
                                           to_host((final_acc, acc_per_epoch, last_loss)))
    acc_at = (acc_per_epoch[:, [e - 1 for e in eval_epochs]] if eval_epochs
              else np.zeros((num_runs, 0), np.float32))
    return EvalResult(final_acc, acc_at, eval_epochs, last_loss)


def _check_inputs(train_images, train_labels, test_images, train_weights, num_runs
                  ) -> np.ndarray:
    """ValueError on inconsistent inputs; returns the `[N]` float32 loss weights."""
    if train_images.ndim != 4 or test_images.ndim != 4:
        raise ValueError("images must be [N, H, W, C]; got train "
                         f"{train_images.shape}, test {test_images.shape}")
    if train_images.shape[1:] != test_images.shape[1:]:
        raise ValueError(f"train images {train_images.shape[1:]} and test images "
                         f"{test_images.shape[1:]} differ in shape")
    if train_images.shape[0] != train_labels.shape[0]:
        raise ValueError(f"{train_images.shape[0]} train images but {train_labels.shape[0]} labels")
    if train_images.shape[0] == 0:
        raise ValueError("empty training set")
    if train_weights is None:
        train_weights = np.ones(train_images.shape[0], np.float32)
    train_weights = np.asarray(to_host(train_weights), np.float32)
    if train_weights.shape != train_labels.shape:
        raise ValueError(f"train_weights has shape {train_weights.shape}, expected "
                         f"{train_labels.shape}")
    if not np.all(train_weights >= 0) or not np.any(train_weights > 0):
        raise ValueError("train_weights must be non-negative and not all zero")
    if num_runs < 1:
        raise ValueError(f"num_runs must be >= 1, got {num_runs}")
    return train_weights


def choose_run_mode(run_mode: str, devices: Sequence[jax.Device]) -> str:
    """The run mode ("vmap" or "sequential") for `run_mode` on `devices`.

    "auto" is "sequential" on CPU devices and "vmap" on accelerators. On XLA:CPU vmapped runs
    cost more than the same runs one after another at every training-set size measured (10 to
    500 images, 3 and 5 runs: benchmarks/results/evaluate_cpu.md), so there is no size rule.
    """
    if run_mode not in RUN_MODES:
        raise ValueError(f"run_mode {run_mode!r}: expected one of {RUN_MODES}")
    if run_mode != "auto":
        return run_mode
    return "sequential" if all_cpu(devices) else "vmap"


def run_layout(num_runs: int, devices: Sequence[jax.Device] | None = None
               ) -> tuple[list[jax.Device], int]:
    """The devices `num_runs` evaluation runs are split over, and the runs each one trains.

    Fewest rounds first (no device trains more than ceil(R / D) runs of D devices), then as few
    devices as reach it, so little padding is trained: 5 runs on 8 devices use 5 devices, 10 use
    5 devices x 2. With several processes every process gives the same number of devices (each
    must hold a part of every program it runs), so 5 runs on 2 x 4 devices train 6.

    Args:
      num_runs: R >= 1.
      devices: the candidates (default: all global devices, `jax.devices()`).

    Returns:
      (devices, runs per device); devices x runs per device >= R.
    """
    groups = devices_by_process(devices)
    per_device = -(-num_runs // (len(groups[0]) * len(groups)))
    take = -(-num_runs // (per_device * len(groups)))  # devices per process
    return [d for i in range(take) for d in (g[i] for g in groups)], per_device


_CACHE: dict = {}
_BAR: list = [None]  # the tqdm bar the compiled program's epoch callback advances
_MAX_TICKS = 100     # progress callbacks per run, at most (+1 for the last epoch)


class _progress_bar:
    def __init__(self, total, desc, enabled):
        self.total, self.desc, self.enabled = total, desc, enabled

    def __enter__(self):
        if self.enabled:
            from tqdm.auto import tqdm
            _BAR[0] = tqdm(total=self.total, desc=self.desc, unit="epoch")

    def __exit__(self, *exc):
        if _BAR[0] is not None:
            _BAR[0].close()
        _BAR[0] = None


def _tick(done):
    bar = _BAR[0]
    if bar is not None:
        done = int(np.max(done))  # under vmap the callback may see a batch of equal values
        if done > bar.n:
            bar.update(done - bar.n)


def _compiled_protocol(make_model, epochs, batch_size, momentum, weight_decay, augment,
                       eval_epochs, test_batch_size, n_train, n_test, progress, mesh, mode):
    """Build (and memoise) the jitted training + testing program, runs split over `mesh`:
    `fn(keys [R], train_x, train_y, test_x, test_y, lr, train_w) -> (final [R], acc [R, E+1],
    last loss [R])`, each device training its `R / mesh.size` runs as `mode` says."""
    options = compiler_options_for(mesh.devices.flat)
    cache_key = (make_model, epochs, batch_size, momentum, weight_decay, augment, eval_epochs,
                 test_batch_size, n_train, n_test, progress, mesh, mode,
                 tuple(sorted((options or {}).items())))
    if cache_key in _CACHE:
        return _CACHE[cache_key]
    total_epochs = epochs + 1
    eval_mask = np.zeros(total_epochs, bool)
    for e in eval_epochs:
        eval_mask[e - 1] = True
    # Momentum trace after coupled weight decay = torch.optim.SGD(momentum, weight_decay).
    tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.trace(decay=momentum))
    run = functools.partial(
        _one_run, make_model=make_model, tx=tx, total_epochs=total_epochs,
        phase1=min(decay_epoch(epochs), total_epochs), batch_size=batch_size,
        test_batch=test_batch_size, eval_mask=jnp.asarray(eval_mask), augment=augment,
        progress=progress)
    runs = _device_runs(run, mode, total_epochs)
    # shard_map, not sharding propagation: every device provably trains only its own runs.
    # On CPU: one kernel at a time (jaxdiff.xla_options; a 5-9 % faster train step).
    fn = jax.jit(jax.shard_map(runs, mesh=mesh, in_specs=(P(RUNS_AXIS),) + (P(),) * 6,
                               out_specs=P(RUNS_AXIS), check_vma=False),
                 compiler_options=options)
    _CACHE[cache_key] = fn
    return fn


def _device_runs(run, mode, total_epochs):
    """One device's share: `fn(keys [r], *data) -> outputs with a leading [r]`, the r runs
    vmapped or one after another; a single run is called as is (both modes alike)."""
    def runs(keys, *data):
        if keys.shape[0] == 1:
            return jax.tree.map(lambda a: a[None], run(keys[0], *data, done_before=0))
        if mode == "vmap":
            return jax.vmap(lambda k: run(k, *data, done_before=0))(keys)
        # The epochs of earlier runs count towards the progress bar.
        done = jnp.arange(keys.shape[0]) * total_epochs
        return jax.lax.map(lambda kd: run(kd[0], *data, done_before=kd[1]), (keys, done))
    return runs


def _batches(perm: jax.Array, batch: int) -> tuple[jax.Array, jax.Array | None]:
    """`perm [n]` -> (`[S, b]` full batches, the `[n - S b]` rest or None)."""
    n = perm.shape[0]
    full = n // batch
    rest = perm[full * batch:] if n % batch else None
    return perm[:full * batch].reshape(full, batch), rest


def model_accuracy(graphdef, params, rest, test_x, test_y, test_batch: int) -> jax.Array:
    """Accuracy of the model `(graphdef, params, rest)` in eval mode on `test_x [M, H, W, C]`,
    `test_y [M]`, in batches of `test_batch` (a smaller last batch of its own size)."""
    # copy=True: params/rest come from an outer scan carry (see models.functional.apply)
    model = nnx.merge(graphdef, params, rest, copy=True)
    model.eval()
    m = test_x.shape[0]
    _, b = num_batches(m, test_batch)
    full = m // b * b

    def count(_, xy):
        x, y = xy
        return None, jnp.sum(jnp.argmax(model(x), -1) == y)

    _, correct = jax.lax.scan(count, None, (test_x[:full].reshape(-1, b, *test_x.shape[1:]),
                                            test_y[:full].reshape(-1, b)))
    total = jnp.sum(correct)
    if full < m:
        total = total + count(None, (test_x[full:], test_y[full:]))[1]
    return total / m


def _one_run(key, train_x, train_y, test_x, test_y, lr, train_w, *, done_before, make_model,
             tx, total_epochs, phase1, batch_size, test_batch, eval_mask, augment, progress):
    """One network of the protocol: init from `key`, `total_epochs` epochs, test passes."""
    init_key, data_key = jax.random.split(key)
    model = make_model(nnx.Rngs(init_key))
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    step = _train_step(graphdef, tx, augment, train_x, train_y, train_w)
    _, b = num_batches(train_x.shape[0], batch_size)
    every = -(-total_epochs // _MAX_TICKS)

    def epoch(carry, e):
        params, rest, opt_state = carry
        # Phase 2 starts with fresh (zero) momentum and lr x 0.1, like a rebuilt optimiser.
        opt_state = jax.tree.map(lambda s: jnp.where(e == phase1, jnp.zeros_like(s), s),
                                 opt_state)
        lr_e = jnp.where(e >= phase1, 0.1 * lr, lr)
        ekey = jax.random.fold_in(data_key, e)
        full, last = _batches(jax.random.permutation(jax.random.fold_in(ekey, 0),
                                                     train_x.shape[0]), b)
        s = jnp.arange(full.shape[0])
        carry, losses = jax.lax.scan(
            lambda c, xs: step(c, xs[0], jax.random.fold_in(ekey, xs[1] + 1), lr_e),
            (params, rest, opt_state), (full, s))
        if last is not None:  # the smaller last batch: one step of its own size
            carry, loss = step(carry, last, jax.random.fold_in(ekey, full.shape[0] + 1), lr_e)
            losses = jnp.concatenate([losses, loss[None]])
        params, rest, _ = carry
        # The predicate depends only on the (unbatched) epoch counter, so under vmap over
        # runs this stays a real conditional: test passes run only after chosen epochs.
        acc = jax.lax.cond(
            eval_mask[e],
            lambda: model_accuracy(graphdef, params, rest, test_x, test_y, test_batch),
            lambda: jnp.float32(-1.0))
        if progress:  # a host callback every `every` epochs and after the last
            jax.lax.cond(((e + 1) % every == 0) | (e + 1 == total_epochs),
                         lambda: jax.debug.callback(_tick, done_before + e + 1), lambda: None)
        return carry, (jnp.mean(losses), acc)

    (params, rest, _), (losses, accs) = jax.lax.scan(
        epoch, (params, rest, tx.init(params)), jnp.arange(total_epochs))
    final = model_accuracy(graphdef, params, rest, test_x, test_y, test_batch)
    return final, accs, losses[-1]


def _train_step(graphdef, tx, augment, train_x, train_y, train_w):
    """`step((params, rest, opt_state), idx [b], key, lr) -> (new state, loss)`: one SGD step on
    the training images `idx` (augmented with `key`), loss weighted by `train_w`."""
    def loss_fn(params, rest, x, y, w):
        # BatchNorm statistics update in train mode: apply returns the new `rest`.
        logits, (_, new_rest) = apply(graphdef, (params, rest), x)
        return masked_cross_entropy(logits, y, w), new_rest

    def step(carry, idx, key, lr):
        params, rest, opt_state = carry
        x = train_x[idx]
        if augment is not None:
            x = augment(key, x)
        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, rest, x, train_y[idx], train_w[idx])
        updates, opt_state = tx.update(grads, opt_state, params)
        params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
        return (params, rest, opt_state), loss

    return step
