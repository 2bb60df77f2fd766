"""Test worker for library calls that no CLI command isolates, run as real processes by
tests/test_multiprocess.py (`run_cli(..., module="tests.worker")`):

    python -m tests.worker JOB OUT_DIR [--coordinator ... --num-processes N --process-id I]

Each job writes `OUT_DIR/process<i>.npz`:

* `quality-net`: gets the tiny quality network `QUALITY_NET` twice from an empty
  `$JAXDIFF_CACHE_DIR` (trained and cached, then loaded back); keys `trained/<path>`,
  `loaded/<path>` and their `test_accuracy`.
* `real-batches`: the real batches of DM steps 0..2 on a mesh of all devices, read by
  `real_batches` from a split that counts the rows it gives out; keys `step<s>` (the global
  batch, gathered) and `read<s>` (the rows this process read, sorted).
"""

import argparse

import numpy as np

QUALITY_NET = dict(dataset="digits", image_size=8, width=8, feature_dim=16, epochs=2, lr=1e-2)


def quality_net() -> dict:
    import jax
    from jaxdiff.diffusion import quality_net as QN

    spec = QN.QualityNetSpec(**QUALITY_NET)
    out = {}
    for name in ("trained", "loaded"):
        net = QN.get_quality_net(spec, progress=True)
        for path, v in jax.tree_util.tree_leaves_with_path(net.params):
            out[f"{name}/{jax.tree_util.keystr(path, simple=True, separator='.')}"] = np.asarray(v)
        out[f"{name}/test_accuracy"] = np.float64(net.test_accuracy)
    return out


class _CountingSplit:
    """A split that records the rows read from it (as a memmap would page them in)."""

    def __init__(self, images):
        self.images, self.shape, self.read = images, images.shape, []

    def __getitem__(self, rows):
        self.read.extend(np.asarray(rows).reshape(-1).tolist())
        return self.images[rows]


def dm_real_batches() -> dict:
    import jax
    from jaxdiff import data as jdata
    from jaxdiff import sharding
    from jaxdiff.distill.placement import Placement
    from jaxdiff.distill.real_pool import make_real_pool, real_batches
    from jaxdiff.distributed import to_host

    train = jdata.load("digits", "train", cache=False)
    split = _CountingSplit(train.images)
    pool = make_real_pool(split, train.labels, 10, train.info.mean, train.info.std)
    place = Placement(sharding.data_mesh())
    real_keys = lambda k: jax.random.split(k, 3)[1][None]  # noqa: E731  (DM's)
    feed = real_batches(pool, 16, jax.random.key(3), real_keys,
                       place.real_batches((1, 10, 16, *train.info.image_shape)))
    out = {}
    for step in range(3):
        split.read.clear()
        (batch,) = feed(step)
        out[f"read{step}"] = np.sort(np.asarray(split.read))
        out[f"step{step}"] = to_host(batch)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("job", choices=("quality-net", "real-batches"))
    ap.add_argument("out")
    ap.add_argument("--coordinator")
    ap.add_argument("--num-processes", type=int)
    ap.add_argument("--process-id", type=int)
    args = ap.parse_args()
    from jaxdiff import distributed
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)

    import jax
    out = {"quality-net": quality_net, "real-batches": dm_real_batches}[args.job]()
    np.savez(f"{args.out}/process{jax.process_index()}.npz", **out)


if __name__ == "__main__":
    main()
