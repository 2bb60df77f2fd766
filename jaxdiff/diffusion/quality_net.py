"""A small "quality network": a ConvNet classifier trained on the same data as the diffusion
model, used to score generated samples.

This is NOT Inception FID. On small data sets (8-16 px digits, CIFAR-10 on a CPU) an Inception
network is unavailable or meaningless, so jaxdiff reports, on the features of this classifier:

* `frechet_distance`  the Frechet distance between Gaussian fits of the classifier features of
  the samples and of real (test-split) images (`jaxdiff.diffusion.quality.frechet_distance`).
  Like FID it is biased upwards for small N: compare figures at equal sample counts only;
* `classifier_accuracy`  fraction of samples classified as the label they were generated for
  (class-conditional sampling only);
* `mean_entropy`  mean entropy (nats) of the predicted class distribution per sample: low means
  the classifier recognises the samples as some class;
* `classifier_score`  `exp(E_x KL(p(y|x) || p(y)))`, the Inception-Score formula on this
  classifier (1 .. num_classes; high = confident and diverse).

Network: `jaxdiff.models.ConvNet` (depth by image size, instance norm) whose output layer maps
to a `feature_dim` embedding, then ReLU (the features), then a linear classifier. Trained with
Adam on the training split, images in the diffusion model space `uint8 / 127.5 - 1`, no
augmentation; its test accuracy is recorded. Training is data-parallel: each step's batch is read
on the host, each process only its devices' rows, and split over all devices of all processes
when their count divides it (else over as many as do, the same number per process;
`train_quality_net`), with the same random stream as on one device: the network depends on the
device count only through float reduction order.

Caching. Training happens once per spec: the parameters are stored with Orbax under
`$JAXDIFF_CACHE_DIR/quality_net/<dataset>-<size>px-s<seed>-<hash>/` (hash of the whole spec),
and `get_quality_net(spec)` loads them afterwards. An interrupted write leaves no entry (Orbax
publishes by rename; the JSON next to it, written last, marks the entry complete).

Several processes: process 0's look at the cache decides for all (`distributed.agree`), so all
load or all train together; all take part in the Orbax save, process 0 writes the JSON, and a
barrier ends the write before anyone goes on. The cache directory must be on a filesystem every
host mounts. Scoring (`sample_quality`, `predict`) reads its inputs to the host
(`distributed.to_host`) and runs whole on every process, on its default device, where the arrays
of a network returned by `get_quality_net` live.

API (stable; DiffRS and LiDAR use it)::

    net = get_quality_net(QualityNetSpec("digits", image_size=8))
    net.logits(x)      # [N, H, W, C] model-space images -> [N, K]   (jittable, differentiable)
    net.features(x)    # -> [N, feature_dim]
    net.log_prob(x, y) # -> [N] log p(y | x): a differentiable reward for guidance
    sample_quality(samples, real, net, labels=...)  # -> dict of the figures above

`QualityNet` is a pytree (its arrays are leaves, the graph and metadata static), so pass it into
jitted functions as an argument: `jax.jit(lambda net, x: net.log_prob(x, y))(net, x)`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxdiff import data as jdata
from jaxdiff import distributed, sharding
from jaxdiff.batching import epoch_batches, num_batches
from jaxdiff.checkpoint import Checkpointer
from jaxdiff.data.cache import cache_dir
from jaxdiff.data.transforms import to_model_space
from jaxdiff.diffusion.quality import frechet_distance_from_features
from jaxdiff.distributed import to_host
from jaxdiff.feeding import HostBatches
from jaxdiff.files import atomic_write_json, fingerprint
from jaxdiff.models.convnet import convnet_depth_for
from jaxdiff.models.quality_classifier import QualityClassifier

QUALITY_NET_FORMAT = 1  # bump when the network or its training changes meaning


@dataclasses.dataclass(frozen=True)
class QualityNetSpec:
    """Everything that determines a quality network (and its cache entry).

    Attributes:
      dataset: jaxdiff dataset name (`digits`, `cifar10_jpeg`, ...).
      image_size: side length the images are resized to (0 = native).
      seed: initialisation and data-order seed.
      width: ConvNet filters per block.
      depth: ConvNet blocks (0 = `convnet_depth_for(image_size)`).
      feature_dim: size of the feature layer used for the Frechet distance.
      epochs, batch_size, lr: Adam training on the whole training split.
      data_dir: TFDS data root ('' = default search); not part of the cache key.
    """

    dataset: str
    image_size: int = 0
    seed: int = 0
    width: int = 32
    depth: int = 0
    feature_dim: int = 64
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    data_dir: str = ""

    def key(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("data_dir")
        return {"format": QUALITY_NET_FORMAT, **d}


@jax.tree_util.register_pytree_node_class
class QualityNet:
    """A trained quality classifier (a pytree: `params`, `rest` are leaves).

    Inputs of every method are model-space images `x: [N, H, W, C]` float in [-1, 1]
    (`jaxdiff.data.to_model_space`), `H = W = spec.image_size`.

    Attributes:
      spec: the `QualityNetSpec`.
      num_classes: K.
      test_accuracy: accuracy on the test split after training (fraction).
    """

    def __init__(self, graphdef, params, rest, spec: QualityNetSpec, num_classes: int,
                 test_accuracy: float):
        self.graphdef, self.params, self.rest = graphdef, params, rest
        self.spec, self.num_classes, self.test_accuracy = spec, num_classes, test_accuracy

    def tree_flatten(self):
        return (self.params, self.rest), (self.graphdef, self.spec, self.num_classes,
                                          self.test_accuracy)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(aux[0], *children, *aux[1:])

    def _model(self):
        return nnx.merge(self.graphdef, self.params, self.rest, copy=True)

    def logits(self, x: jax.Array) -> jax.Array:
        """`[N, H, W, C] -> [N, K]` unnormalised class scores."""
        return self._model()(x)

    def features(self, x: jax.Array) -> jax.Array:
        """`[N, H, W, C] -> [N, feature_dim]` (post-ReLU penultimate layer)."""
        return self._model().features(x)

    def log_prob(self, x: jax.Array, labels: jax.Array) -> jax.Array:
        """`log p(y | x)`: `[N]`, differentiable in `x` (a reward for guidance)."""
        lp = jax.nn.log_softmax(self.logits(x), axis=-1)
        return jnp.take_along_axis(lp, jnp.asarray(labels, jnp.int32)[:, None], axis=-1)[:, 0]


# --------------------------------------------------------------------------------------------
# Training and caching
# --------------------------------------------------------------------------------------------


def _make_model(spec: QualityNetSpec, image_shape, num_classes, key):
    h, _, c = image_shape
    depth = spec.depth or convnet_depth_for(h)
    return QualityClassifier(nnx.Rngs(key), in_channels=c, num_classes=num_classes,
                             image_size=h, depth=depth, width=spec.width,
                             feature_dim=spec.feature_dim)


def cache_entry(spec: QualityNetSpec) -> Path:
    """The cache directory of `spec` (it may not exist yet)."""
    digest = fingerprint(spec.key(), 12)
    return (cache_dir() / "quality_net"
            / f"{spec.dataset}-{spec.image_size or 'native'}px-s{spec.seed}-{digest}")


def _training_mesh(batch: int, num_devices: int | None) -> jax.sharding.Mesh:
    """The mesh every training batch of `batch` images is split over.

    `num_devices` None: as many devices as split the batch evenly, the same number from every
    process (`sharding.batch_mesh`: all, when their count divides the batch). The batch itself
    never changes (that would change the network, not only where it is computed). When the
    process count does not divide the batch, every process trains the whole network on its own
    first device instead. An explicit `num_devices` (one process) must divide the batch.
    """
    if num_devices is None:
        if batch % jax.process_count():
            return sharding.data_mesh(devices=jax.local_devices()[:1])
        return sharding.batch_mesh(batch)
    if jax.process_count() > 1 and num_devices != jax.device_count():
        raise ValueError(f"num_devices={num_devices}: a run over {jax.process_count()} processes "
                         "chooses its devices itself; pass num_devices=None")
    if batch % num_devices:
        raise ValueError(f"quality net batch_size {batch} cannot be split over {num_devices} "
                         f"devices; use a multiple of {num_devices}, or num_devices=None")
    return sharding.data_mesh(num_devices)


def train_quality_net(spec: QualityNetSpec, *, progress: bool = False,
                      num_devices: int | None = None) -> QualityNet:
    """Train a quality network from scratch (no cache); one jitted Adam step per batch.

    Data-parallel over the devices of `_training_mesh` (all, when their count divides the
    batch; `num_devices` to choose): the parameters are replicated, each step's batch is drawn
    from the data key, read on the host (each process only its devices' rows: `feeding.
    HostBatches`, from a memory map of the data cache) and split over the devices, and XLA
    averages the gradients. The key use is
    the same on any mesh, so the result depends on the devices only through float reduction
    order. The returned network's arrays are on this process's default device, as those of a
    network loaded from the cache.
    """
    if spec.epochs < 1 or spec.batch_size < 1:
        raise ValueError(f"quality net epochs and batch_size must be >= 1, got {spec}")
    kw = dict(data_dir=spec.data_dir or None, image_size=spec.image_size or None)
    train = jdata.load(spec.dataset, "train", mmap=True, **kw)
    test = jdata.load(spec.dataset, "test", **kw)
    info = train.info
    key = jax.random.key(spec.seed)
    k_init, k_data = jax.random.split(key)
    model = _make_model(spec, info.image_shape, info.num_classes, k_init)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(spec.lr)
    n = len(train.labels)
    # drop the ragged tail (jaxdiff.batching): fixed shapes, every image seen over the epochs
    steps_per_epoch, batch = num_batches(n, spec.batch_size, drop_remainder=True)
    total = spec.epochs * steps_per_epoch
    mesh = _training_mesh(batch, num_devices)
    split = sharding.batch_sharding(mesh)

    def loss_fn(p, rest, x, y):
        logits = nnx.merge(graphdef, p, rest, copy=True)(x)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    def rows(t):  # the training rows of step t (read on the host, each process its devices')
        e, s = t // steps_per_epoch, t % steps_per_epoch
        return epoch_batches(jax.random.fold_in(k_data, e), n, batch, drop_remainder=True)[0][s]

    def step(params, opt, rest, x, y):
        # uint8 batches (a quarter of float32's bytes) go to model space on the devices; the
        # mean loss over the split batch makes XLA average the gradients
        loss, g = jax.value_and_grad(loss_fn)(params, rest, to_model_space(x), y)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, loss

    batches = HostBatches((train.images, np.asarray(train.labels, np.int32)), rows, (split,) * 2)
    # every other input is an argument placed on the mesh (none captured from one device)
    params, opt, rest_m = sharding.replicate((params, tx.init(params), rest), mesh)
    fit = jax.jit(step, donate_argnums=(0, 1), out_shardings=sharding.replicated(mesh))
    for t in range(total):
        params, opt, loss = fit(params, opt, rest_m, *batches(t))
        sharding.settle_cpu_step(loss)   # one step in flight on CPU devices (see there)
    params, loss = to_host((params, loss))
    net = QualityNet(graphdef, jax.tree.map(jnp.asarray, params), rest, spec, info.num_classes,
                     0.0)
    acc = float(np.mean(predict(net, to_model_space(test.images)).argmax(-1) == test.labels))
    if progress:
        where = (f"{mesh.size} of {jax.device_count()} devices"
                 if mesh.is_multi_process or jax.process_count() == 1
                 else "one device per process")
        print(f"[quality net] trained {spec.dataset} {info.image_shape} on {where}: final loss "
              f"{float(loss):.4f}, test accuracy {100 * acc:.2f} %", flush=True)
    return QualityNet(graphdef, net.params, rest, spec, info.num_classes, acc)


def get_quality_net(spec: QualityNetSpec, *, progress: bool = False) -> QualityNet:
    """The quality network of `spec`: loaded from the cache, or trained once and cached.

    Several processes: process 0's view of the cache decides for all (`distributed.agree`), so
    all load or all train together; all take part in the Orbax save, process 0 writes the JSON.
    """
    entry = cache_entry(spec)
    meta_path = entry / "quality_net.json"
    info = jdata.get_info(spec.dataset, "train", image_size=spec.image_size or None)
    if distributed.agree(meta_path.exists()):
        meta = json.loads(meta_path.read_text())
        model = _make_model(spec, info.image_shape, info.num_classes, jax.random.key(0))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        with Checkpointer(entry / "checkpoint") as ck:
            _, state, _ = ck.restore({"params": params, "rest": rest})
        return QualityNet(graphdef, state["params"], state["rest"], spec, info.num_classes,
                          float(meta["test_accuracy"]))
    net = train_quality_net(spec, progress=progress)
    with Checkpointer(entry / "checkpoint", max_to_keep=1) as ck:
        ck.save(0, {"params": net.params, "rest": net.rest}, wait=True)
    # The JSON marks the entry complete; it is written last, atomically (by process 0 only).
    atomic_write_json(meta_path, {"spec": spec.key(), "test_accuracy": net.test_accuracy,
                                  "num_classes": net.num_classes})
    distributed.barrier("quality_net_cached")  # complete before any process may look for it
    return net


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


@jax.jit
def _forward(net: QualityNet, x):
    return net.features(x), net.logits(x)


def _batched(net: QualityNet, x, batch_size: int):
    """(features [N, F], logits [N, K]) in fixed-size, zero-padded batches (one compile).

    Runs on this process's default device, whole on every process: its inputs are host arrays
    and every process needs the figures, which cost little next to what they score.
    """
    x = np.asarray(to_host(x), np.float32)
    n = x.shape[0]
    b = min(batch_size, n)
    feats, logits = [], []
    for i in range(0, n, b):
        chunk = x[i:i + b]
        pad = b - chunk.shape[0]
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        f, lg = to_host(_forward(net, jnp.asarray(chunk)))
        feats.append(f[:b - pad])
        logits.append(lg[:b - pad])
    return np.concatenate(feats), np.concatenate(logits)


def predict(net: QualityNet, x, batch_size: int = 500) -> np.ndarray:
    """Host logits `[N, K]` of model-space images `x: [N, H, W, C]`, in fixed-size batches."""
    return _batched(net, x, batch_size)[1]


def classifier_stats(logits, labels=None) -> dict:
    """Accuracy (if `labels`), mean entropy and classifier score from logits `[N, K]` (host)."""
    lg = np.asarray(logits, np.float64)
    lp = lg - lg.max(axis=1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(axis=1, keepdims=True))
    p = np.exp(lp)
    entropy = -(p * lp).sum(axis=1)
    marginal = p.mean(axis=0)
    kl = (p * (lp - np.log(np.clip(marginal, 1e-300, None))[None])).sum(axis=1)
    out = {"mean_entropy": float(entropy.mean()), "classifier_score": float(math.exp(kl.mean())),
           "class_histogram": np.bincount(lg.argmax(1), minlength=lg.shape[1]).tolist()}
    if labels is not None:
        out["classifier_accuracy"] = float(np.mean(lg.argmax(1) == np.asarray(labels)))
    return out


def sample_quality(samples, real, net: QualityNet, labels=None, *, batch_size: int = 500) -> dict:
    """Score generated images against real ones with a quality network.

    Args:
      samples: `[N, H, W, C]` model-space samples (N >= 2).
      real: `[M, H, W, C]` model-space real images (e.g. the test split), M >= 2.
      net: a `QualityNet` for this data.
      labels: `[N]` intended classes of the samples (class-conditional sampling), or None.

    Returns:
      `{"frechet_distance", "mean_entropy", "classifier_score", "class_histogram",
      "classifier_accuracy" (with labels), "num_samples", "num_real"}`.
    """
    samples, real = np.asarray(to_host(samples)), np.asarray(to_host(real))
    if samples.shape[1:] != real.shape[1:]:
        raise ValueError(f"samples {samples.shape[1:]} and real images {real.shape[1:]} differ "
                         "in shape")
    if len(samples) < 2 or len(real) < 2:
        raise ValueError("sample_quality needs at least 2 samples and 2 real images")
    f_s, lg_s = _batched(net, samples, batch_size)
    f_r, _ = _batched(net, real, batch_size)
    out = {"frechet_distance": frechet_distance_from_features(f_s, f_r)}
    out.update(classifier_stats(lg_s, labels))
    out.update(num_samples=int(len(samples)), num_real=int(len(real)))
    return out
