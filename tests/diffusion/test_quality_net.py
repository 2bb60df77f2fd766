"""The quality network (`jaxdiff.diffusion.quality_net`): trained once and cached, reloaded
bit-identically, its figures against direct formulas on its outputs; training split over 6 or 8
devices equals training on one up to float reduction order."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import data as jdata
from jaxdiff.diffusion import quality as Q
from jaxdiff.diffusion import quality_net as QN


def test_quality_net_cache_and_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXDIFF_CACHE_DIR", str(tmp_path))
    spec = QN.QualityNetSpec("digits", image_size=8, width=8, feature_dim=16, epochs=4, lr=1e-2)
    net = QN.get_quality_net(spec)
    assert QN.cache_entry(spec).is_dir() and 0.5 < net.test_accuracy <= 1.0
    again = QN.get_quality_net(spec)  # loaded, not retrained
    for a, b in zip(jax.tree.leaves(net), jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    test = jdata.load("digits", "test", image_size=8)
    real = jdata.to_model_space(test.images)
    samples = real[:40] + 0.3 * np.random.default_rng(0).standard_normal(real[:40].shape).astype(np.float32)
    labels = test.labels[:40]
    r = QN.sample_quality(samples, real, net, labels)
    # Direct formulas on the network's outputs (net passed through jit as a pytree).
    f_s = np.asarray(jax.jit(lambda n, x: n.features(x))(net, jnp.asarray(samples)))
    f_r = np.asarray(net.features(jnp.asarray(real)))
    np.testing.assert_allclose(r["frechet_distance"], Q.frechet_distance_from_features(f_s, f_r),
                               rtol=1e-4)
    lg = np.asarray(net.logits(jnp.asarray(samples)), np.float64)
    p = np.exp(lg - lg.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(r["classifier_accuracy"], np.mean(lg.argmax(1) == labels))
    np.testing.assert_allclose(r["mean_entropy"], np.mean(-(p * np.log(p)).sum(1)), rtol=1e-4)
    pm = p.mean(0)
    np.testing.assert_allclose(r["classifier_score"],
                               np.exp(np.mean((p * (np.log(p) - np.log(pm))).sum(1))), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(net.log_prob(jnp.asarray(samples), labels)),
                               np.log(p[np.arange(40), labels]), rtol=1e-4, atol=1e-5)


def _before_instance_norm(path) -> bool:
    """A ConvNet block's conv bias: the instance norm after it subtracts it again, so its gradient
    is 0 up to rounding (~1e-9), which Adam normalises into steps of order lr: its value is noise
    in any run and never reaches the output."""
    name = jax.tree_util.keystr(path)
    return "['blocks']" in name and "['conv']['bias']" in name


def test_training_split_over_devices_matches_one_device():
    # Observed: parameters within 1.2e-7 (values up to 1.4), logits within 3.4e-6 (values up to
    # 12), the same test accuracy; the tolerances below leave ~100x margin.
    spec = QN.QualityNetSpec("digits", image_size=8, width=8, feature_dim=16, epochs=4, lr=1e-2,
                             batch_size=120)
    x_test = jdata.to_model_space(jdata.load("digits", "test", image_size=8).images)
    one = QN.train_quality_net(spec, num_devices=1)
    for num_devices in (6, None):   # None: all 8, as 8 divides the batch
        net = QN.train_quality_net(spec, num_devices=num_devices)
        assert net.test_accuracy == one.test_accuracy > 0.5
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(one.params),
                                jax.tree.leaves(net.params)):
            assert len(b.devices()) == 1          # back on one device, as a cached net loads
            if not _before_instance_norm(path):
                np.testing.assert_allclose(b, a, rtol=0, atol=1e-5,
                                           err_msg=jax.tree_util.keystr(path))
        np.testing.assert_allclose(QN.predict(net, x_test), QN.predict(one, x_test), rtol=0,
                                   atol=1e-4)
    with pytest.raises(ValueError, match="batch_size 120 cannot be split over 7 devices"):
        QN.train_quality_net(spec, num_devices=7)
