"""jaxdiff.data: registry and statistics, digits, TFDS path (mocked and real), cache, transforms,
ZCA closed forms, per-class sampling, error messages.

Every test uses a private cache directory (`tmp_path`) except the CIFAR-10 cache-speed test, which
deliberately uses the default cache so that repeated runs stay fast.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxdiff import data
from jaxdiff.data import cache as data_cache
from jaxdiff.data import datadirs
from jaxdiff.data.transforms import linear_weights


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXDIFF_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _fake_prepared(root: Path, name: str, version: str) -> Path:
    """What `locate` looks for: <root>/<name>/<version>/dataset_info.json."""
    d = root / name / version
    d.mkdir(parents=True)
    (d / "dataset_info.json").write_text("{}")
    return d


# --------------------------------------------------------------------------- registry, stats


def test_stats_table_matches_dd_common():
    # dd-common.md §1.1 and lcmat.md, digit for digit.
    assert data.get_info("mnist").mean == (0.1307,) and data.get_info("mnist").std == (0.3081,)
    fm = data.get_info("fashion_mnist")
    assert (fm.mean, fm.std) == ((0.2861,), (0.3530,))
    sv = data.get_info("svhn_cropped")
    assert sv.mean == (0.4377, 0.4438, 0.4728) and sv.std == (0.1980, 0.2010, 0.1970)
    for name in ("cifar10", "cifar10_jpeg"):
        c = data.get_info(name)
        assert c.mean == (0.4914, 0.4822, 0.4465) and c.std == (0.2023, 0.1994, 0.2010)
    c100 = data.get_info("cifar100")
    assert c100.mean == (0.5071, 0.4866, 0.4409) and c100.std == (0.2673, 0.2564, 0.2762)
    assert data.STATS["lcmat_cifar"] == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def test_registry_shapes_classes_and_sizes():
    expect = {"cifar10": ((32, 32, 3), 10, 50000, 10000),
              "cifar10_jpeg": ((32, 32, 3), 10, 50000, 10000),
              "cifar100": ((32, 32, 3), 100, 50000, 10000),
              "mnist": ((28, 28, 1), 10, 60000, 10000),
              "fashion_mnist": ((28, 28, 1), 10, 60000, 10000),
              "svhn_cropped": ((32, 32, 3), 10, 73257, 26032),
              "digits": ((8, 8, 1), 10, 1438, 359)}
    assert set(data.DATASET_NAMES) == set(expect)
    for name, (shape, k, n_train, n_test) in expect.items():
        tr, te = data.get_info(name, "train"), data.get_info(name, "test")
        assert tr.image_shape == shape and tr.num_classes == k == len(tr.class_names)
        assert len(set(tr.class_names)) == k
        assert (tr.num_examples, te.num_examples) == (n_train, n_test)
        assert len(tr.mean) == len(tr.std) == shape[2]
    assert data.get_info("cifar100").class_names[:3] == ("apple", "aquarium_fish", "baby")
    assert data.get_info("cifar100").class_names[-1] == "worm"
    assert data.get_info("cifar10").class_names[0] == "airplane"
    assert data.get_info("digits", image_size=32).image_shape == (32, 32, 1)
    assert data.get_info("cifar10", image_size=(16, 24)).image_shape == (16, 24, 3)
    hash(data.get_info("cifar10"))  # usable as a static jit argument


def test_with_stats_overrides():
    c100 = data.get_info("cifar100")
    as_mtt = data.with_stats(c100, "cifar10")  # MTT/DDiF normalise CIFAR-100 with CIFAR-10 stats
    assert as_mtt.mean == (0.4914, 0.4822, 0.4465) and as_mtt.std == (0.2023, 0.1994, 0.2010)
    assert as_mtt.class_names == c100.class_names and as_mtt.name == "cifar100"
    lc = data.with_stats(data.get_info("cifar10"), data.STATS["lcmat_cifar"])
    assert lc.std == (0.2470, 0.2435, 0.2616)
    custom = data.with_stats(data.get_info("mnist"), (0.5, 0.25))
    assert custom.mean == (0.5,) and custom.std == (0.25,)
    with pytest.raises(ValueError, match="3 channels"):
        data.with_stats(data.get_info("cifar10"), "mnist")
    with pytest.raises(ValueError, match="lcmat_cifar"):
        data.with_stats(data.get_info("cifar10"), "no_such_stats")


# --------------------------------------------------------------------------- digits


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
    assert any(private_cache.rglob("images.npy"))
    for x in (b, c):
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


# --------------------------------------------------------------------------- resize


def test_resize_hand_computed():
    # Upsampling 2 -> 4 px, half-pixel centres: samples at -0.25, 0.25, 0.75, 1.25 (edges clamp).
    row = np.array([0, 255], np.uint8).reshape(1, 1, 2, 1)
    out = data.resize_bilinear(np.repeat(row, 2, axis=1), (2, 4))
    np.testing.assert_array_equal(out[0, 0, :, 0], [0, 64, 191, 255])  # 63.75 and 191.25 rounded
    # Downsampling 4 -> 2 is antialiased: triangle widened to 2 px, centre 0.5 weighs
    # (0.75, 0.75, 0.25, 0) / 1.75 -> (0*0.75 + 10*0.75 + 20*0.25) / 1.75 = 7.142857.
    w = linear_weights(4, 2)
    np.testing.assert_allclose(w @ np.array([0.0, 10, 20, 30]), [50 / 7, 30 - 50 / 7], atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)


@pytest.mark.parametrize("src,dst",
                         [((8, 8), (32, 32)), ((32, 32), (20, 12)), ((28, 28), (32, 16))])
def test_resize_weights_match_jax_image_resize(src, dst):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, *src, 3))
    ours = np.einsum("oh,nhwc,pw->nopc", linear_weights(src[0], dst[0]), x,
                     linear_weights(src[1], dst[1]))
    ref = jax.image.resize(jnp.asarray(x, jnp.float32), (2, *dst, 3), "linear", antialias=True)
    np.testing.assert_allclose(ours, np.asarray(ref), atol=2e-3)


# --------------------------------------------------------------------------- normalise


def test_normalize_exact_values_and_round_trip():
    info = data.with_stats(data.get_info("mnist"), (0.5, 0.25))
    x = np.array([0, 255, 51], np.uint8).reshape(1, 1, 3, 1)
    y = data.normalize(x, info)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    np.testing.assert_allclose(y.ravel(), [-2.0, 2.0, -1.2], atol=1e-6)  # 51/255 = 0.2
    np.testing.assert_allclose(data.denormalize(y, info).ravel(), [0.0, 1.0, 0.2], atol=1e-6)

    cifar = data.get_info("cifar10")
    imgs = np.random.default_rng(1).integers(0, 256, (4, 5, 5, 3), dtype=np.uint8)
    z = data.normalize(imgs, cifar)
    np.testing.assert_allclose(z[0, 0, 0], (imgs[0, 0, 0] / 255 - np.array(cifar.mean)) /
                               np.array(cifar.std), rtol=1e-5)
    np.testing.assert_allclose(data.denormalize(z, cifar) * 255, imgs, atol=1e-3)
    # stats= overrides the info's statistics.
    z_lc = data.normalize(imgs, cifar, stats="lcmat_cifar")
    np.testing.assert_allclose(z_lc, data.normalize(imgs, data.with_stats(cifar, "lcmat_cifar")))
    assert not np.allclose(z_lc, z)


def test_normalize_jax_arrays_and_display_clip():
    info = data.get_info("cifar10")
    imgs = np.random.default_rng(2).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    y = jax.jit(lambda a: data.normalize(a, info))(jnp.asarray(imgs))
    assert isinstance(y, jax.Array) and y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), data.normalize(imgs, info), rtol=1e-6, atol=1e-6)
    # Denormalize does not clip (synthetic images leave [0, 1]); to_display does.
    far = np.full((1, 1, 1, 3), 10.0, np.float32)
    assert (data.denormalize(far, info) > 1).all()
    np.testing.assert_array_equal(data.to_display(far, info), 1.0)
    np.testing.assert_array_equal(data.to_display(-far, info), 0.0)
    with pytest.raises(TypeError, match="uint8"):
        data.normalize(imgs.astype(np.float32), info)
    with pytest.raises(ValueError, match="channels"):
        data.normalize(imgs[..., :1], info)


# --------------------------------------------------------------------------- ZCA


def _correlated_images(n=60, h=2, w=3, c=2, seed=0):
    rng = np.random.default_rng(seed)
    d = h * w * c
    mix = rng.normal(size=(d, d)) * np.linspace(0.1, 2.0, d)  # unequal variances, correlated
    return (rng.normal(size=(n, d)) @ mix + rng.normal(size=d)).reshape(n, h, w, c)


def _cov(flat):
    xc = flat - flat.mean(0)
    return xc.T @ xc / (len(flat) - 1)


def _flat_chw(x):
    return np.transpose(x, (0, 3, 1, 2)).reshape(len(x), -1)


def test_zca_whitened_covariance_closed_form():
    x = _correlated_images()
    reg = 0.1
    zca = data.fit_zca(x, reg=reg)
    y = np.asarray(data.zca_apply(zca, x), np.float64)
    sigma = _cov(_flat_chw(x))
    # cov(xT) = T Sigma T = U diag(S / (S + reg)) U^T = Sigma (Sigma + reg I)^-1.
    expected = np.linalg.solve(sigma + reg * np.eye(len(sigma)), sigma).T
    np.testing.assert_allclose(_cov(_flat_chw(y)), expected, atol=2e-5)
    np.testing.assert_allclose(_flat_chw(y).mean(0), 0.0, atol=1e-5)
    # reg = 0 on full-rank data whitens exactly: identity covariance.
    y0 = np.asarray(data.zca_apply(data.fit_zca(x, reg=0.0), x), np.float64)
    np.testing.assert_allclose(_cov(_flat_chw(y0)), np.eye(len(sigma)), atol=2e-4)


def test_zca_inverse_reproduces_inputs():
    x = _correlated_images(seed=1)
    zca = data.fit_zca(x, reg=0.1)
    back = data.zca_invert(zca, data.zca_apply(zca, x))
    np.testing.assert_allclose(np.asarray(back), x, atol=2e-4)
    np.testing.assert_allclose(zca.inverse.astype(np.float64) @ zca.whiten, np.eye(12), atol=1e-5)
    np.testing.assert_allclose(zca.whiten, zca.whiten.T, atol=1e-6)


def test_zca_matrices_are_in_chw_order():
    x = _correlated_images(seed=2)
    zca = data.fit_zca(x, reg=0.1)

    def direct(flat):  # the reference recipe on an already-flattened [N, D] matrix
        s, u = np.linalg.eigh(_cov(flat))
        return flat.mean(0), (u / np.sqrt(s + 0.1)) @ u.T

    mean_chw, t_chw = direct(_flat_chw(x))  # NCHW flattening, as kornia/MTT see the data
    np.testing.assert_allclose(zca.mean, mean_chw, atol=1e-6)
    np.testing.assert_allclose(zca.whiten, t_chw, atol=1e-5)
    _, t_hwc = direct(x.reshape(len(x), -1))  # NHWC flattening: the same transform, permuted
    assert not np.allclose(zca.whiten, t_hwc, atol=1e-3)  # ...so this test tells them apart
    # Whitened images computed directly on NCHW data, brought back to NHWC.
    y_chw = ((_flat_chw(x) - mean_chw) @ t_chw).reshape(x.shape[0], 2, 2, 3)
    y_direct = y_chw.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(data.zca_apply(zca, x)), y_direct, atol=1e-4)


def test_zca_errors():
    with pytest.raises(ValueError, match="at least 2"):
        data.fit_zca(np.zeros((1, 2, 2, 1)))
    zca = data.fit_zca(_correlated_images())
    with pytest.raises(ValueError, match="12 features"):
        data.zca_apply(zca, jnp.zeros((1, 3, 3, 2)))


# --------------------------------------------------------------------------- classes


def test_class_indices_hand_case():
    labels = np.array([2, 0, 1, 0, 2, 2])
    got = data.class_indices(labels, 4)
    assert [g.tolist() for g in got] == [[1, 3], [2], [0, 4, 5], []]
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        data.class_indices(labels, 2)


def test_sample_per_class():
    labels = np.repeat(np.arange(5), [7, 3, 9, 4, 5])
    np.random.default_rng(0).shuffle(labels)
    idx = data.sample_per_class(3, labels, 5, 3)
    assert idx.shape == (15,)
    np.testing.assert_array_equal(labels[idx], np.repeat(np.arange(5), 3))
    assert len(np.unique(idx)) == 15
    np.testing.assert_array_equal(idx, data.sample_per_class(3, labels, 5, 3))
    assert not np.array_equal(idx, data.sample_per_class(4, labels, 5, 3))
    # A Generator is accepted and advances.
    rng = np.random.default_rng(3)
    np.testing.assert_array_equal(data.sample_per_class(rng, labels, 5, 3), idx)
    assert not np.array_equal(data.sample_per_class(rng, labels, 5, 3), idx)
    # n equal to the smallest class takes the whole class.
    full = data.sample_per_class(0, labels, 5, 3)
    np.testing.assert_array_equal(np.sort(full[3:6]), np.flatnonzero(labels == 1))
    with pytest.raises(ValueError, match="class 1 has 3, class 3 has 4"):
        data.sample_per_class(0, labels, 5, 5)


# --------------------------------------------------------------------------- errors, locating


def test_unknown_name_and_split():
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'.*cifar10, cifar10_jpeg"):
        data.load("cifar11")
    with pytest.raises(ValueError, match="unknown split 'validation'.*train, test"):
        data.load("digits", "validation")
    with pytest.raises(ValueError, match="image_size"):
        data.load("digits", image_size=0)


def test_missing_data_names_every_directory(tmp_path, monkeypatch):
    jd, td, home = tmp_path / "jd", tmp_path / "td", tmp_path / "home"
    monkeypatch.setenv("JAXDIFF_DATA_DIR", str(jd))
    monkeypatch.setenv("TFDS_DATA_DIR", str(td))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(datadirs, "_REPO_ROOT", tmp_path / "repo")  # no shared/tfds beside it
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load("cifar100", "train")
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    positions = [msg.index(str(p)) for p in (jd, td, home / "tensorflow_datasets")]
    assert positions == sorted(positions)  # listed in search order
    assert "'cifar100'" in msg and "tfds build cifar100" in msg and "JAXDIFF_DATA_DIR" in msg
    # An explicit data_dir is the only directory searched.
    with pytest.raises(FileNotFoundError) as err:
        data.load("mnist", data_dir=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value) and str(jd) not in str(err.value)


def test_search_order_and_version_choice(tmp_path, monkeypatch):
    jd, td = tmp_path / "jd", tmp_path / "td"
    monkeypatch.setenv("JAXDIFF_DATA_DIR", str(jd))
    monkeypatch.setenv("TFDS_DATA_DIR", str(td))
    _fake_prepared(td, "mnist", "3.0.1")
    assert data.locate("mnist").data_dir == td.resolve()
    _fake_prepared(jd, "mnist", "9.0.0")
    _fake_prepared(jd, "mnist", "10.0.0")  # numeric, not lexicographic, ordering
    (jd / "mnist" / "11.0.0").mkdir()  # no dataset_info.json: not a prepared version
    found = data.locate("mnist")
    assert found.data_dir == jd.resolve() and found.version == "10.0.0"
    # A shared/tfds folder beside the checkout comes after the env vars, before ~/.
    monkeypatch.setattr(datadirs, "_REPO_ROOT", tmp_path / "checkout")
    home_default = Path("~/tensorflow_datasets").expanduser()
    assert [d for d, _ in data.candidate_dirs()] == [jd, td, home_default]
    (tmp_path / "shared" / "tfds").mkdir(parents=True)
    dirs = [d for d, _ in data.candidate_dirs()]
    assert dirs == [jd, td, (tmp_path / "shared" / "tfds").resolve(), home_default]


# --------------------------------------------------------------------------- TFDS path (mocked)


def _mock_examples(n, shape, label_fn=lambda i: i % 10):
    return [{"image": np.full(shape, 10 * i, np.uint8), "label": label_fn(i)} for i in range(n)]


def test_tfds_path_with_mock_data(tmp_path):
    root = tmp_path / "tfds"
    _fake_prepared(root, "mnist", "3.0.1")
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
    _fake_prepared(root, "fashion_mnist", "3.0.1")
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


# --------------------------------------------------------------------------- cache robustness


def test_cache_keys_and_corrupt_entry(private_cache):
    key = {"version": "1.0.0", "data_dir": "/a", "image_size": None}
    p = data_cache.cache_path("x", "train", key)
    assert p != data_cache.cache_path("x", "train", {**key, "data_dir": "/b"})
    assert p != data_cache.cache_path("x", "train", {**key, "image_size": (16, 16)})
    assert p != data_cache.cache_path("x", "test", key)
    assert p.is_relative_to(private_cache)

    good = data.load("digits", "test")
    (entry,) = [d for d in (private_cache / "digits").iterdir()]
    (entry / "images.npy").write_bytes(b"garbage, not an npy file")
    with pytest.warns(UserWarning, match="unreadable cache entry"):
        again = data.load("digits", "test")
    np.testing.assert_array_equal(again.images, good.images)
    np.testing.assert_array_equal(data.load("digits", "test").images, good.images)  # rewritten


def test_interrupted_cache_write_leaves_no_entry(private_cache, monkeypatch):
    def interrupted_rename(src, dst):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(data_cache.os, "rename", interrupted_rename)
        with pytest.raises(KeyboardInterrupt):
            data.load("digits", "test")
    assert list((private_cache / "digits").iterdir()) == []  # no entry, no temp directory
    ds = data.load("digits", "test")
    assert ds.images.shape == (359, 8, 8, 1)
    assert len(list((private_cache / "digits").iterdir())) == 1


# --------------------------------------------------------------------------- real CIFAR-10


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
    np.testing.assert_array_equal(np.bincount(train.labels, minlength=10), 5000)
    np.testing.assert_array_equal(np.bincount(test.labels, minlength=10), 1000)
    assert train.info.num_classes == 10 and train.info.num_examples == 50000
    # The table's CIFAR mean is the data's per-channel mean (JPEG re-encoding moves it < 1e-3);
    # the true per-pixel std is LCMat's (0.2470, 0.2435, 0.2616), not DC's (0.2023, ...).
    x = train.images[::5].astype(np.float32) / 255
    np.testing.assert_allclose(x.mean((0, 1, 2)), train.info.mean, atol=2e-3)
    np.testing.assert_allclose(x.std((0, 1, 2)), data.STATS["lcmat_cifar"].std, atol=5e-3)
