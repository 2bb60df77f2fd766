"""Streaming FID statistics: equal to a float64 one-shot `np.cov` for any batching, order, mask
and sharding; the Inception stream against pytorch-fid's features; reference `.npz` files."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.errors import MissingInputError, UserError
from jaxdiff.fid import inception, stats
from jaxdiff.sharding import batch_sharding, data_mesh

update = jax.jit(stats.update_moments)


def _stream(rows, batch: int, dim: int):
    m = stats.init_moments(dim)
    for s in range(0, len(rows), batch):
        m = update(m, jnp.asarray(rows[s:s + batch]))
    return m


def _errors(m, rows):
    """(mu error / max|mu|, sigma error / max|sigma|) against float64 one-shot statistics."""
    f = np.asarray(rows, np.float64)
    mu, sigma = stats.finalize(m)
    want_mu, want_sigma = f.mean(0), np.cov(f, rowvar=False)
    return (np.max(np.abs(mu - want_mu)) / np.max(np.abs(want_mu)),
            np.max(np.abs(sigma - want_sigma)) / np.max(np.abs(want_sigma)))


def feature_like(n=3000, d=16, seed=0):
    """Non-negative features with a large mean next to their spread (mean ~5, std ~0.05), where
    the textbook E[ff^T] - mu mu^T in float32 loses everything."""
    rng = np.random.default_rng(seed)
    return (5.0 + rng.uniform(0, 1, d) + 0.05 * rng.standard_normal((n, d))).astype(np.float32)


@pytest.mark.parametrize("batch", [7, 64, 3000])
def test_streaming_equals_one_shot(batch):
    rows = feature_like()
    m = _stream(rows, batch, 16)
    assert int(m.count) == 3000
    err_mu, err_sigma = _errors(m, rows)
    assert err_mu < 1e-6 and err_sigma < 1e-6
    # what the shift avoids: uncentred float32 sums lose the covariance entirely
    f = jnp.asarray(rows)
    naive = (f.T @ f / 3000 - jnp.outer(f.mean(0), f.mean(0))) * 3000 / 2999
    assert np.max(np.abs(np.asarray(naive) - np.cov(rows.astype(np.float64), rowvar=False))) \
        / np.max(np.abs(np.cov(rows.astype(np.float64), rowvar=False))) > 1e-3


def test_order_and_batch_size_do_not_matter():
    rows = feature_like(n=1000, seed=1)
    perm = np.random.default_rng(0).permutation(1000)
    results = [stats.finalize(_stream(r, b, 16)) for r, b in
               ((rows, 50), (rows[perm], 50), (rows[perm], 13), (rows[::-1], 999))]
    for mu, sigma in results[1:]:
        np.testing.assert_allclose(mu, results[0][0], rtol=1e-6)
        assert np.max(np.abs(sigma - results[0][1])) < 1e-6 * np.max(np.abs(results[0][1]))


def test_many_small_batches_keep_precision():
    """5,000 batches of 4: Kahan-compensated sums do not drift with the number of batches
    (~2e-8 here; plain float32 running sums: ~2.6e-6 for sigma, 7e-7 for mu)."""
    rows = np.abs(np.random.default_rng(2).normal(0.3, 1.0, (20_000, 8))).astype(np.float32)
    err_mu, err_sigma = _errors(_stream(rows, 4, 8), rows)
    assert err_mu < 2e-7 and err_sigma < 2e-7


def test_masked_rows_are_left_out():
    rows = feature_like(n=40, seed=3)
    junk = np.full((24, 16), 1e6, np.float32)
    mask = np.r_[np.ones(40), np.zeros(24)].astype(np.float32)
    m = update(stats.init_moments(16), jnp.asarray(np.r_[rows, junk]), jnp.asarray(mask))
    # an all-padding first batch does not fix the shift
    m2 = update(stats.init_moments(16), jnp.asarray(junk), jnp.zeros(24))
    m2 = update(m2, jnp.asarray(rows))
    for mm in (m, m2):
        assert int(mm.count) == 40
        err_mu, err_sigma = _errors(mm, rows)
        assert err_mu < 1e-6 and err_sigma < 1e-6


def test_sharded_batches_give_the_same_sums():
    """Features split over 8 devices: XLA reduces the sums across them; moments replicated."""
    rows = feature_like(n=512, seed=4)
    mesh = data_mesh(8)
    m = stats.init_moments(16)
    for s in range(0, 512, 64):
        m = update(m, jax.device_put(rows[s:s + 64], batch_sharding(mesh)))
    assert m.outer.sharding.is_fully_replicated
    want = stats.finalize(_stream(rows, 64, 16))
    got = stats.finalize(m)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    assert np.max(np.abs(got[1] - want[1])) < 1e-6 * np.max(np.abs(want[1]))


def test_to_pixels_is_edms_quantisation():
    x = jnp.asarray([-1.5, -1.0, -0.999, 0.0, 0.5, 0.996, 1.0, 2.0])
    # EDM: (x * 127.5 + 128).clip(0, 255).to(torch.uint8)
    want = np.trunc(np.clip(np.asarray(x, np.float32) * 127.5 + 128, 0, 255))
    np.testing.assert_array_equal(np.asarray(inception.to_pixels(x)), want)
    assert list(want) == [0, 0, 0, 128, 191, 254, 255, 255]


def test_finalize_needs_two_images():
    m = update(stats.init_moments(4), jnp.ones((1, 4)))
    with pytest.raises(UserError, match="at least 2 images; got 1"):
        stats.finalize(m)


# --------------------------------------------------------------------------------------------
# Through the FID Inception (seeded stand-in weights; one compiled step of batch 4)

def test_inception_stream_matches_pytorch_fid_features(net, fx):
    """2 images in a padded batch of 4 on 4 devices -> mean and covariance of pytorch-fid's
    recorded features (EDM/TF preprocessing)."""
    acc = stats.InceptionStatistics(net, batch_size=4, resize="tf")
    assert acc.mesh.size == 4
    acc.add(fx["images"][:1])                       # host pixels, padded to the batch
    on_device = jnp.asarray(np.r_[fx["images"][1:], np.zeros((3, 32, 32, 3), np.uint8)])
    acc.add_batch(on_device.astype(jnp.float32), np.array([1, 0, 0, 0], np.float32))
    assert acc.count == 2
    mu, sigma = acc.result()
    ref = fx["features_tf"].astype(np.float64)
    np.testing.assert_allclose(mu, ref.mean(0), rtol=0, atol=1e-4 * np.abs(ref).max())
    want = np.cov(ref, rowvar=False)
    assert np.max(np.abs(sigma - want)) < 1e-3 * np.max(np.abs(want))


def test_fid_end_to_end_equals_pytorch_fids(net, fx):
    """Two sets of 6 images: streamed statistics and FID against pytorch-fid's whole pipeline
    (PNG files, `calculate_activation_statistics`, `calculate_frechet_distance`)."""
    from jaxdiff.fid.frechet import fid_from_statistics

    got = []
    for tag in ("a", "b"):
        acc = stats.InceptionStatistics(net, batch_size=4, resize="pytorch-fid")
        acc.add(fx[f"e2e_images_{tag}"])           # batches of 4 + 2 (padded)
        mu, sigma = acc.result()
        ref = fx[f"e2e_features_{tag}"].astype(np.float64)
        np.testing.assert_allclose(mu, ref.mean(0), rtol=0, atol=1e-4 * np.abs(ref).max())
        want = np.cov(ref, rowvar=False)
        assert np.max(np.abs(sigma - want)) < 1e-4 * np.max(np.abs(want))
        got += [mu, sigma]
    # 6 samples: rank-5 covariances. (method="sqrtm" agrees too, but scipy's sqrtm of a
    # 2048 x 2048 product takes ~10x longer: tests/fid/test_frechet.py compares the methods.)
    assert fid_from_statistics(*got) == pytest.approx(float(fx["e2e_fid"]), rel=1e-4)


def test_dataset_statistics_of_a_split(net, tmp_path, monkeypatch):
    """The embedded digits (8x8 gray, repeated to RGB), first 3 images of train, streamed."""
    from jaxdiff.data import load

    monkeypatch.setenv("JAXDIFF_CACHE_DIR", str(tmp_path))
    mu, sigma, n = stats.dataset_statistics(net, "digits", "train", batch_size=4, limit=3)
    assert n == 3
    images = load("digits", "train").images[:3]
    feats = np.concatenate([np.asarray(net.apply(inception.preprocess(jnp.asarray(
        images[i:i + 2]), mode="tf"))) for i in (0, 1)])[[0, 1, 3]].astype(np.float64)
    np.testing.assert_allclose(mu, feats.mean(0), rtol=0, atol=1e-5 * np.abs(feats).max())
    want = np.cov(feats, rowvar=False)
    assert np.max(np.abs(sigma - want)) < 1e-4 * np.max(np.abs(want))


# --------------------------------------------------------------------------------------------
# Reference files

def test_reference_round_trip_and_edm_format(tmp_path):
    rng = np.random.default_rng(5)
    f = rng.normal(size=(3000, 2048)).astype(np.float32)[:, :2048]
    mu, sigma = f.mean(0).astype(np.float64), np.eye(2048) * 0.5
    path = stats.save_reference(tmp_path / "ref.npz", mu, sigma, count=3000, resize="tf",
                                detector=stats.describe_detector("tf"))
    with np.load(path) as z:     # plain arrays: EDM's `dict(np.load(f))` reads it
        assert z["mu"].dtype == np.float64 and z["sigma"].shape == (2048, 2048)
        assert str(z["resize"]) == "tf" and int(z["count"]) == 3000
    got_mu, got_sigma = stats.load_reference(path)
    np.testing.assert_array_equal(got_mu, mu)
    np.testing.assert_array_equal(got_sigma, sigma)
    edm = tmp_path / "cifar10-32x32.npz"          # EDM's fid.py ref writes exactly mu, sigma
    np.savez(edm, mu=mu.astype(np.float64), sigma=sigma)
    np.testing.assert_array_equal(stats.load_reference(edm)[0], mu)


def test_reference_refusals(tmp_path):
    with pytest.raises(MissingInputError) as e:
        stats.load_reference(tmp_path / "cifar10-32x32.npz")
    assert str(tmp_path / "cifar10-32x32.npz") in str(e.value)
    assert stats.EDM_REFS_URL in str(e.value) and "jaxdiff fid-ref" in str(e.value)
    other = tmp_path / "pool768.npz"
    np.savez(other, mu=np.zeros(768), sigma=np.eye(768))
    with pytest.raises(UserError, match="feature dimension 768, but the FID Inception's pool3 "
                                        "features have 2048"):
        stats.load_reference(other)
    keys = tmp_path / "keys.npz"
    np.savez(keys, m=np.zeros(3), s=np.eye(3))
    with pytest.raises(UserError, match=r"need arrays 'mu' and 'sigma'; the file holds "
                                        r"\['m', 's'\]"):
        stats.load_reference(keys)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable .npz"):
        stats.load_reference(junk)
