"""The quality network (`jaxdiff.diffusion.quality_net`): trained once and cached, reloaded
bit-identically, its figures against direct formulas on its outputs."""


import jax
import jax.numpy as jnp
import numpy as np

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
