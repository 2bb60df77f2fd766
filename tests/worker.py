"""Test worker for library calls that no CLI command isolates, run as real processes by
tests/test_multiprocess.py (`run_cli(..., module="tests.worker")`):

    python -m tests.worker JOB OUT_DIR [--coordinator ... --num-processes N --process-id I]

Each job writes `OUT_DIR/process<i>.npz`:

* `quality-net`: gets the tiny quality network `QUALITY_NET` twice from an empty
  `$JAXDIFF_CACHE_DIR` (trained and cached, then loaded back); keys `trained/<path>`,
  `loaded/<path>` and their `test_accuracy`.
* `real-batches`: the real batches of DM steps 0..2 on a mesh of all devices, read by
  `real_batches` from a split that counts the rows it gives out; keys `step<s>` (the global
  batch, gathered) and `read<s>` (the rows this process read, sorted). The split is loaded
  memory-mapped from an empty cache `OUT_DIR/cache` shared by the processes, through
  `distributed.main_first`; key `entry_found`: the cache entry existed when this process
  loaded (process 0 builds it, the others read it).
* `sample-fid`: `jaxdiff sample` of an EDM network with streaming Inception FID
  (`sample_fid`); keys `fid`, `fid_num_samples`, `nfe`.
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


def dm_real_batches(out_dir: str) -> dict:
    import os
    from pathlib import Path

    import jax
    from jaxdiff import data as jdata
    from jaxdiff import distributed, sharding
    from jaxdiff.distill.placement import Placement
    from jaxdiff.distill.real_pool import make_real_pool, real_batches
    from jaxdiff.distributed import to_host

    cache = Path(out_dir) / "cache"
    os.environ["JAXDIFF_CACHE_DIR"] = str(cache)

    def load():
        found = any(not p.name.endswith(".tmp") for p in (cache / "digits").glob("train-*"))
        return found, jdata.load("digits", "train", mmap=True)

    found, train = distributed.main_first(load, "worker digits train")
    split = _CountingSplit(train.images)
    pool = make_real_pool(split, train.labels, 10, train.info.mean, train.info.std)
    place = Placement(sharding.data_mesh())
    real_keys = lambda k: jax.random.split(k, 3)[1][None]  # noqa: E731  (DM's)
    feed = real_batches(pool, 16, jax.random.key(3), real_keys,
                       place.real_batches((1, 10, 16, *train.info.image_shape)))
    out = {"entry_found": np.bool_(found)}
    for step in range(3):
        split.read.clear()
        (batch,) = feed(step)
        out[f"read{step}"] = np.sort(np.asarray(split.read))
        out[f"step{step}"] = to_host(batch)
    return out


def sample_fid() -> dict:
    """`jaxdiff sample` of the shared EDM fixture network (16 px, 10 classes) with Inception FID
    against a stand-in reference, the Inception built from the seeded stand-in weights of
    tests/fixtures/fid (the real file is not in the repository). Paths from the environment:
    `EDM_PICKLE`, `FID_REF`, `RUN_DIR`. Keys: `fid`, `fid_num_samples`, `nfe`."""
    import importlib.util
    import json
    import os
    from pathlib import Path

    from jaxdiff.config_utils import load_config, set_values
    from jaxdiff.fid import inception
    from jaxdiff.pipelines import sample
    from jaxdiff.specs.sample import resolve

    fixtures = Path(__file__).resolve().parent / "fixtures" / "fid"
    spec = importlib.util.spec_from_file_location("seeded", fixtures / "seeded_weights.py")
    seeded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seeded)
    table = json.loads((fixtures / "pt_inception_state_dict.json").read_text())["entries"]
    net = inception.from_state_dict(seeded.seeded_state_dict({n: s for n, s, _ in table}))
    sample.FI.load = lambda path=None: net
    c = set_values(load_config("sample_cifar10_edm"), model_dir=os.environ["EDM_PICKLE"],
                   num_samples=12, batch_size=8, save_samples=True, progress=False,
                   run_dir=os.environ["RUN_DIR"], **{
                       "solver.steps": 2, "fid.ref": os.environ["FID_REF"],
                       "fid.weights": os.environ["FID_REF"], "expect.image_size": 16})
    out = sample.run(resolve(c))
    return {k: np.float64(out[k]) for k in ("fid", "fid_num_samples", "nfe")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("job", choices=("quality-net", "real-batches", "sample-fid"))
    ap.add_argument("out")
    ap.add_argument("--coordinator")
    ap.add_argument("--num-processes", type=int)
    ap.add_argument("--process-id", type=int)
    args = ap.parse_args()
    from jaxdiff import distributed
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)

    import jax
    out = {"quality-net": quality_net, "real-batches": lambda: dm_real_batches(args.out),
           "sample-fid": sample_fid}[args.job]()
    np.savez(f"{args.out}/process{jax.process_index()}.npz", **out)


if __name__ == "__main__":
    main()
