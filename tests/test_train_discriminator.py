"""`jaxdiff train-discriminator` end to end on digits with an untrained tiny denoiser: outputs,
loadable discriminator, DiffRS demo figures, resume = uninterrupted run, bad config errors."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from jaxdiff.pipelines import denoiser_io as io
from jaxdiff.pipelines import train_discriminator as TD


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("den"))
    spec = io.model_spec({"name": "mlp", "hidden": 16, "depth": 1, "emb_dim": 8}, (8, 8, 1), 0)
    spec.update(sigma_data=0.75, dataset="digits", image_size=8, data_scaling=io.DATA_SCALING)
    model = io.build_model(spec, nnx.Rngs(0))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    io.save_model(d, params, params, rest, spec, step=0)
    return d


def _config(model_dir, run_dir, **over):
    from jaxdiff.config_utils import load_config

    c = load_config("train_discriminator_digits")
    c.model_dir, c.run_dir, c.progress = model_dir, run_dir, False
    c.fake.update(num=16, batch_size=16, steps=3)
    c.disc.update(width=8, depth=1, emb_dim=8)
    c.train.update(steps=4, batch_size=8)
    c.diffrs.update(steps=3, warmup=8, warmup_batch=8, num_samples=4, batch_size=4, max_iter=0)
    c.log_every, c.checkpoint_every = 2, 2
    for k, v in over.items():
        c[k] = v
    return c


@pytest.mark.slow
def test_pipeline_outputs_and_resume(model_dir, tmp_path):
    a = TD.run(_config(model_dir, str(tmp_path / "a")))
    assert os.path.exists(tmp_path / "a" / TD.DISC_JSON)
    d = a["diffrs"]
    assert d["complete"] and d["nfe_algorithmic_per_sample"] >= d["base_nfe"] == 5
    assert len(d["log_m"]) == 4 and min(d["log_m"]) >= 0.0
    with open(tmp_path / "a" / "results.json") as f:
        assert json.load(f)["steps"] == 4
    disc = TD.load_discriminator(str(tmp_path / "a"))
    x = jax.numpy.zeros((3, 8, 8, 1))
    assert disc.make_logit(disc.state())(x, jax.numpy.ones(3)).shape == (3,)

    # DiffRS through `jaxdiff sample` (the guidance seam): the pool is sharded over the mesh and
    # the restored discriminator placed beside the replicated model; 8 devices == 1 device.
    from jaxdiff.config_utils import load_config
    from jaxdiff.pipelines import sample as SP

    def drs(n_dev):
        c = load_config("sample_digits_diffrs")
        c.model_dir, c.progress, c.quality.enabled = model_dir, False, False
        c.guidance.update(disc_dir=str(tmp_path / "a"), warmup=8, warmup_batch=8)
        c.solver.steps, c.num_samples, c.batch_size, c.num_devices = 3, 16, 16, n_dev
        c.run_dir = str(tmp_path / f"s{n_dev}")
        return SP.generate(c)

    one, eight = drs(1), drs(8)
    assert eight["mesh_size"] == 8
    np.testing.assert_array_equal(one["samples"], eight["samples"])

    cfg = _config(model_dir, str(tmp_path / "b"), stop_after=2)
    cfg.diffrs.num_samples = 0
    assert TD.run(cfg)["stopped_at"] == 2
    cfg.stop_after, cfg.resume = 0, True
    TD.run(cfg)
    b = TD.load_discriminator(str(tmp_path / "b"))
    for u, v in zip(jax.tree.leaves(disc.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(u, v)


def test_bad_config(model_dir, tmp_path):
    with pytest.raises(ValueError, match="disc.extractor"):
        c = _config(model_dir, str(tmp_path / "c"))
        c.disc.extractor = "resnet"
        TD.run(c)
    with pytest.raises(ValueError, match="diffrs.gamma"):
        c = _config(model_dir, str(tmp_path / "c"))
        c.diffrs.gamma = 1.5
        TD.run(c)
    with pytest.raises(FileNotFoundError, match="train-denoiser"):
        TD.run(_config(str(tmp_path / "missing"), str(tmp_path / "c")))
