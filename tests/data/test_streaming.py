"""Photo subsets larger than the host memory a test allows: the cache entry is decoded straight
into a memory-mapped file a chunk of records at a time, and the distillation's per-class real
batches (`distill.real_pool.real_batches` over `feeding.HostBatches`) read only their rows.

The budget bounds the host allocations Python and NumPy make (`tracemalloc`, which NumPy
reports its array buffers to); the memory-mapped file's pages are the kernel's page cache, which
it can evict, not memory the process holds. Decoding the subset into one array (what the loader
did before) or reading the pool whole allocates the full decoded size, several times the budget.
"""

from __future__ import annotations

import tracemalloc
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdiff import data, sharding
from jaxdiff.data import records, synthetic
from jaxdiff.data.imagenet import SUBSETS
from jaxdiff.distill import real_pool

RES, PER_CLASS, BATCH = 64, 160, 4
CORRUPT = f"{SUBSETS['imagenette'].wnids[5]}_7.JPEG"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A fake imagenet2012 with ImageNette's 10 classes x 160 train photos (one truncated)."""
    root = tmp_path_factory.mktemp("inet_big")
    counts = {w: (PER_CLASS, 1) for w in SUBSETS["imagenette"].wnids}
    synthetic.write_imagenet2012(root, counts, corrupt=[CORRUPT], size_range=(40, 70))
    return root


def _peak_mib(fn):
    """(fn(), peak MiB of Python + NumPy allocations while it ran)."""
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_subset_decoded_and_sampled_within_a_memory_budget(source, monkeypatch):
    n = 10 * PER_CLASS - 1
    decoded_mib = n * RES * RES * 3 / 2**20          # 18.7 MiB of uint8 photos
    budget_mib = decoded_mib / 4
    monkeypatch.setattr(records, "_CHUNK", 64)        # records per read: the build's working set
    load = lambda: data.load("imagenette", "train", data_dir=source, image_size=RES,  # noqa: E731
                             mmap=True)
    records.label_index(records.open_split(*_located(source), "train"))  # warm the label index
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")               # the truncated photo's warning
        train, build_peak = _peak_mib(load)
    assert isinstance(train.images, np.memmap) and train.images.shape == (n, RES, RES, 3)
    assert train.info.undecodable == 1
    assert build_peak < budget_mib, (build_peak, decoded_mib)

    # The same photos as an in-memory decode (no cache), bit for bit.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = data.load("imagenette", "train", data_dir=source, image_size=RES, cache=False)
    assert np.array_equal(np.asarray(train.images), whole.images)
    assert np.array_equal(train.labels, whole.labels)

    # Twenty steps of DM's real batches from the memory map: within the budget, and exactly
    # the images the in-program draw (`sample_real`'s, before normalising) takes from the whole
    # pool in memory.
    pool = real_pool.make_real_pool(train.images, train.labels, 10, (0.5,) * 3, (0.25,) * 3)
    full = real_pool.make_real_pool(whole.images, whole.labels, 10, (0.5,) * 3, (0.25,) * 3)
    loop_key = jax.random.key(3)
    in_memory = jnp.asarray(full.class_images())
    want = {s: np.asarray(jax.vmap(lambda images, i: images[i])(
        in_memory, real_pool.draw_indices(jax.random.fold_in(loop_key, s), 10, pool.per_class,
                                          BATCH))) for s in (0, 7, 19)}
    del whole, full, in_memory
    target = NamedSharding(sharding.data_mesh(1), P())
    feed = real_pool.real_batches(pool, BATCH, loop_key, lambda k: k[None], target, chunk=8)
    feed(0)                                            # compile the index draw outside the count

    def sample():
        same = []
        for s in range(20):
            (real,) = feed(s)                          # [1, C, BATCH, RES, RES, 3] uint8
            if s in want:
                same.append(bool(np.array_equal(np.asarray(real)[0], want[s])))
        return same

    same, sample_peak = _peak_mib(sample)
    assert same == [True] * 3
    assert sample_peak < budget_mib, (sample_peak, decoded_mib)
    print(f"decoded {decoded_mib:.1f} MiB; peak host allocations: build {build_peak:.2f} MiB, "
          f"20 steps {sample_peak:.2f} MiB")


def test_building_the_entry_is_atomic(source, monkeypatch, private_cache):
    """An interrupt while decoding into the memory-mapped entry leaves no entry behind."""
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(records, "decode_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        data.load("imagenette", "train", data_dir=source, image_size=16)
    entries = [p for p in (private_cache / "imagenette").iterdir()]
    assert entries == []


def _located(root):
    from jaxdiff.data.datadirs import find_prepared
    return find_prepared(root, "imagenet2012"), "imagenet2012"
