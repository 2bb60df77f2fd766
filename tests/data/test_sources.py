"""`jaxdiff.data.load` (`jaxdiff.data.sources`): the TFDS path on mocked data (resize,
validation) and on the prepared CIFAR-10."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxdiff import data

from tests.helpers import fake_prepared


def _mock_examples(n, shape, label_fn=lambda i: i % 10):
    return [{"image": np.full(shape, 10 * i, np.uint8), "label": label_fn(i)} for i in range(n)]


def test_tfds_path_with_mock_data(tmp_path):
    root = tmp_path / "tfds"
    fake_prepared(root, "mnist", "3.0.1")
    calls = []

    def as_data_source(builder, split=None, **kwargs):
        calls.append((builder.name, str(builder.version), split))
        return _mock_examples(7, (28, 28, 1))

    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=as_data_source):
        ds = data.load("mnist", "test", data_dir=root)
        again = data.load("mnist", "test", data_dir=root)  # from the cache: TFDS not called
        assert calls == [("mnist", "3.0.1", "test")]
        data.load("mnist", "test", data_dir=root, cache=False)
        assert len(calls) == 2
    assert ds.images.shape == (7, 28, 28, 1) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.images[:, 0, 0, 0], 10 * np.arange(7))
    np.testing.assert_array_equal(ds.labels, np.arange(7) % 10)
    assert ds.labels.dtype == np.int32
    assert ds.info.name == "mnist" and ds.info.num_examples == 7 and ds.info.mean == (0.1307,)
    np.testing.assert_array_equal(again.images, ds.images)


def test_tfds_path_resize_and_validation(tmp_path):
    root = tmp_path / "tfds"
    fake_prepared(root, "fashion_mnist", "3.0.1")
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=lambda *a, **k: _mock_examples(5, (28, 28, 1))):
        ds = data.load("fashion_mnist", "train", data_dir=root, image_size=32)
    assert ds.images.shape == (5, 32, 32, 1) and ds.info.image_shape == (32, 32, 1)
    np.testing.assert_array_equal(ds.images[:, 5, 7, 0], 10 * np.arange(5))  # constant images
    assert ds.info.class_names[0] == "T-shirt/top"

    bad_shape = lambda *a, **k: _mock_examples(3, (32, 32, 1))  # noqa: E731
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=bad_shape):
        with pytest.raises(ValueError, match=r"\(32, 32, 1\).*expected \(28, 28, 1\)"):
            data.load("fashion_mnist", "test", data_dir=root)
    bad_label = lambda *a, **k: _mock_examples(3, (28, 28, 1), lambda i: 10 + i)  # noqa: E731
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=bad_label):
        with pytest.raises(ValueError, match=r"labels outside \[0, 10\)"):
            data.load("fashion_mnist", "test", data_dir=root, cache=False)


def _cifar_or_skip():
    try:
        return data.locate("cifar10_jpeg")
    except data.DatasetNotFoundError as e:
        pytest.skip(f"prepared cifar10_jpeg not found (set JAXDIFF_DATA_DIR): {e}")


@pytest.mark.needs_cifar
def test_cifar10_jpeg_shapes_stats_and_cache_speed(monkeypatch):
    _cifar_or_skip()
    # Deliberately the default cache: the first run ever decodes 60,000 JPEGs (seconds); every
    # later run, and the timed second load below, reads the decoded arrays.
    monkeypatch.delenv("JAXDIFF_CACHE_DIR")
    train = data.load("cifar10_jpeg", "train")
    times = []
    for _ in range(3):  # best of 3: the machine is shared, so single timings are noisy
        t0 = time.perf_counter()
        train = data.load("cifar10_jpeg", "train")
        times.append(time.perf_counter() - t0)
    assert min(times) < 0.5, f"cached loads of CIFAR-10 train took {times} s"
    test = data.load("cifar10_jpeg", "test")
    assert train.images.shape == (50000, 32, 32, 3) and test.images.shape == (10000, 32, 32, 3)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(train.labels, minlength=10),
                                  data.train_class_counts("cifar10_jpeg"))
    np.testing.assert_array_equal(np.bincount(test.labels, minlength=10), 1000)
    assert train.info.num_classes == 10 and train.info.num_examples == 50000
    # The table's CIFAR mean is the data's per-channel mean (JPEG re-encoding moves it < 1e-3);
    # the true per-pixel std is LCMat's (0.2470, 0.2435, 0.2616), not DC's (0.2023, ...).
    x = train.images[::5].astype(np.float32) / 255
    np.testing.assert_allclose(x.mean((0, 1, 2)), train.info.mean, atol=2e-3)
    np.testing.assert_allclose(x.std((0, 1, 2)), data.STATS["lcmat_cifar"].std, atol=5e-3)
