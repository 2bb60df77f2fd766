"""`jaxdiff train-discriminator` end to end on digits with an untrained tiny denoiser: outputs,
loadable discriminator, DiffRS with it through `jaxdiff sample` (tables, acceptance figures,
1 vs 8 devices), resume = uninterrupted run (also on another device count), bad config errors."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from jaxdiff.config_utils import load_config
from jaxdiff.data import MODEL_SPACE
from jaxdiff.diffusion import rejection as R
from jaxdiff.diffusion.saved import DISC_JSON, load_discriminator, save_model
from jaxdiff.models.denoisers import build_denoiser, denoiser_spec
from jaxdiff.pipelines import sample as SP
from jaxdiff.pipelines import train_discriminator as TD
from jaxdiff.specs.base import SpecError
from jaxdiff.specs.sample import resolve as resolve_sample
from jaxdiff.specs.train_discriminator import resolve

from tests.helpers import assert_resumed, resume_on_meshes


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("den"))
    spec = denoiser_spec({"name": "mlp", "hidden": 16, "depth": 1, "emb_dim": 8}, (8, 8, 1), 0)
    spec.update(sigma_data=0.75, dataset="digits", image_size=8, data_scaling=MODEL_SPACE)
    model = build_denoiser(spec, nnx.Rngs(0))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    save_model(d, params, params, rest, spec, step=0)
    return d


def _config(model_dir, run_dir, **over):
    c = load_config("train_discriminator_digits")
    c.model_dir, c.run_dir, c.progress = model_dir, run_dir, False
    c.fake.update(num=16, batch_size=16, steps=3)
    c.disc.update(width=8, depth=1, emb_dim=8)
    c.train.update(steps=4, batch_size=8)
    c.log_every, c.checkpoint_every = 2, 2
    for k, v in over.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def trained_disc(model_dir, tmp_path_factory):
    """One uninterrupted 4-step run on the 8 devices (8 real + 8 fake per step, split 1 + 1):
    `(run_dir, results)`."""
    run_dir = str(tmp_path_factory.mktemp("disc") / "a")
    return run_dir, TD.run(resolve(_config(model_dir, run_dir, num_devices=8)))


def _diffrs(model_dir, disc_dir, run_dir, num_devices):
    c = load_config("sample_digits_diffrs")
    c.model_dir, c.progress, c.quality.enabled = model_dir, False, False
    c.guidance.update(disc_dir=disc_dir, warmup=8, warmup_batch=8)
    c.solver.steps, c.num_samples, c.batch_size, c.num_devices = 3, 16, 16, num_devices
    c.run_dir = run_dir
    return SP.generate(resolve_sample(c))


@pytest.mark.slow
def test_pipeline_outputs_and_diffrs(model_dir, trained_disc, tmp_path):
    a_dir, a = trained_disc
    assert os.path.exists(os.path.join(a_dir, DISC_JSON)) and "diffrs" not in a
    with open(os.path.join(a_dir, "results.json")) as f:
        assert json.load(f)["steps"] == 4
    disc = load_discriminator(a_dir)
    x = jax.numpy.zeros((3, 8, 8, 1))
    assert disc.make_logit(disc.state())(x, jax.numpy.ones(3)).shape == (3,)

    # DiffRS with it through `jaxdiff sample`: the pool is sharded over the mesh and the
    # restored discriminator placed beside the replicated model; 8 devices == 1 device.
    one = _diffrs(model_dir, a_dir, str(tmp_path / "s1"), 1)
    eight = _diffrs(model_dir, a_dir, str(tmp_path / "s8"), 8)
    assert eight["mesh_size"] == 8
    np.testing.assert_array_equal(one["samples"], eight["samples"])
    aux = one["aux"]
    assert aux["complete"] == 1.0 and aux["nfe"] >= 2 * 3 - 1       # Heun, 3 steps: 5 NFE
    (logits,) = one["sampler"].warmup_cache.values()
    tables = R.rejection_tables(logits, 0.75)
    assert len(tables.log_m) == 4 and float(np.min(tables.log_m)) >= 0.0


@pytest.mark.slow
def test_resume_equals_uninterrupted(model_dir, trained_disc, tmp_path):
    """Stopped after step 2 and resumed: on the 8 devices of the uninterrupted run bitwise its
    discriminator; on another mesh (8 -> 4) within 1e-6 (observed 3e-8). The fake set
    of the first part (`fake.npz`) is reused, whatever mesh the resume has."""

    def run(d, n, resume):
        over = {"resume": True} if resume else {"stop_after": 2}
        part = TD.run(resolve(_config(model_dir, str(d), num_devices=n, **over)))
        assert resume or part["stopped_at"] == 2

    a = load_discriminator(trained_disc[0])
    for (first, then), d in resume_on_meshes(run, tmp_path).items():
        b = load_discriminator(str(d))
        for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
            assert_resumed(v, u, first, then)


def test_fingerprint_keeps_the_old_diffrs_section(model_dir):
    """Runs started while the preset had a `diffrs` section resume: its old defaults are part of
    the fingerprint when the config has none (the old formula: the config without the
    command's drive keys, `config_fingerprint` leaving out the run-control keys)."""
    from jaxdiff.checkpoint import config_fingerprint
    from jaxdiff.specs.train_discriminator import DRIVE_KEYS, LEGACY_DIFFRS

    c = _config(model_dir, "r")
    old = {k: v for k, v in c.to_dict().items() if k not in DRIVE_KEYS}
    old["diffrs"] = dict(LEGACY_DIFFRS)
    spec = resolve(c)
    assert spec.resolution.fingerprint == config_fingerprint(old)
    assert any(n.startswith("diffrs = ") for n in spec.resolution.notes)


def test_bad_config(model_dir, tmp_path):
    with pytest.raises(SpecError, match="'disc.extractor' = 'resnet'"):
        c = _config(model_dir, str(tmp_path / "c"))
        c.disc.extractor = "resnet"
        resolve(c)
    with pytest.raises(SpecError, match="'train.lr' = -1 must be > 0"):
        c = _config(model_dir, str(tmp_path / "c"))
        c.train.lr = -1.0
        resolve(c)
    with pytest.raises(SpecError, match="'model_dir'.*train-denoiser"):
        resolve(_config(str(tmp_path / "missing"), str(tmp_path / "c")))
    assert not os.path.exists(tmp_path / "c")
