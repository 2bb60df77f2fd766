"""The embedded digits (`jaxdiff.data.digits`): the split, pixels, determinism, statistics,
upsampling."""

from __future__ import annotations


import numpy as np

from jaxdiff import data


def test_digits_split_and_pixels():
    from sklearn.datasets import load_digits

    d = load_digits()
    train, test = data.load("digits", "train"), data.load("digits", "test")
    assert train.images.shape == (1438, 8, 8, 1) and test.images.shape == (359, 8, 8, 1)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
    assert train.info.num_examples == 1438 and test.info.num_examples == 359
    # Documented rule: test gets floor(0.2 * n_c + 0.5) of each class.
    per_class = np.bincount(d.target, minlength=10)
    np.testing.assert_array_equal(np.bincount(test.labels, minlength=10),
                                  np.floor(0.2 * per_class + 0.5).astype(int))
    np.testing.assert_array_equal(np.bincount(train.labels, minlength=10) +
                                  np.bincount(test.labels, minlength=10), per_class)
    idx = data.digits_split_indices()
    assert len(np.intersect1d(idx["train"], idx["test"])) == 0
    assert len(np.union1d(idx["train"], idx["test"])) == 1797
    # Pixels 0..16 scaled to 0..255: 16 -> 255, 8 -> 128 (127.5 rounds to even, 128), 1 -> 16.
    np.testing.assert_array_equal(test.images[..., 0], np.rint(d.images[idx["test"]] * 255 / 16))
    np.testing.assert_array_equal(test.labels, d.target[idx["test"]])
    assert train.images.max() == 255 and train.images.min() == 0


def test_digits_deterministic_and_cache_consistent(private_cache):
    a = data.load("digits", "train", cache=False)
    b = data.load("digits", "train")  # writes the cache
    c = data.load("digits", "train")  # reads it
    m = data.load("digits", "train", mmap=True)  # maps it: rows read when indexed
    assert any(private_cache.rglob("images.npy"))
    assert isinstance(m.images, np.memmap) and not m.images.flags.writeable
    assert not isinstance(c.images, np.memmap) and c.images.flags.writeable
    for x in (b, c, m):
        np.testing.assert_array_equal(a.images, x.images)
        np.testing.assert_array_equal(a.labels, x.labels)
    assert a.info == c.info


def test_digits_stats_are_train_split_stats():
    x = data.load("digits", "train").images.astype(np.float64) / 255.0
    info = data.get_info("digits")
    # Hard-coded to 4 decimals: population mean/std of all train pixels at 8x8.
    assert abs(x.mean() - info.mean[0]) < 5e-5
    assert abs(x.std() - info.std[0]) < 5e-5


def test_digits_upsampled():
    native = data.load("digits", "test")
    up = data.load("digits", "test", image_size=16)
    assert up.images.shape == (359, 16, 16, 1) and up.info.image_shape == (16, 16, 1)
    np.testing.assert_array_equal(up.images, data.resize_bilinear(native.images, (16, 16)))
    np.testing.assert_array_equal(up.labels, native.labels)
