"""`jaxdiff sample` with DG's discriminator (tests/fixtures/dg, imported by
`models.dg.import_discriminator`) on the analytic GMM source at 16 x 16 x 3: DG guidance against
its closed form on a one-step grid (8 devices), DiffRS with the imported discriminator against
the discriminator evaluated directly on the warm-up trajectories, and the refusals."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.diffusion import dg as DG
from jaxdiff.diffusion import solvers as S
from jaxdiff.errors import UserError
from jaxdiff.models import dg as dg_model
from jaxdiff.pipelines import sample as SP
from jaxdiff.specs.base import SpecError
from jaxdiff.specs.sample import resolve as resolve_sample

from tests.helpers import tiny_sample_config

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "dg"
_ROOT = Path(__file__).resolve().parents[2]
EDM_PICKLE = next((d / "edm_ddpmpp_cond.pkl" for d in (_ROOT.parent / "shared" / "fixtures" / "edm",
                                                       _ROOT / "shared" / "fixtures" / "edm")
                   if d.is_dir()), None)
TINY = json.loads((FIX / "dg_tiny_configs.json").read_text())
GMM = dict(image_shape=(16, 16, 3), num_components=4, std=0.3, mean_scale=0.5, seed=0)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    out = tmp_path_factory.mktemp("dg") / "imported"
    return dg_model.import_discriminator(FIX / "dg_classifier.pt", FIX / "dg_head_cond.pt", out,
                                         classifier=TINY["classifier"], head=TINY["head"])


def _config(run_dir, guidance, **over):
    over = {"source": "gmm", "num_samples": 8, "batch_size": 8, "solver.name": "heun", **over}
    c = tiny_sample_config(run_dir, **over)
    c.gmm = dict(GMM)
    c.guidance = guidance
    return c


def test_dg_guidance_is_its_closed_form_on_one_step(imported, tmp_path):
    """One Euler step 80 -> 0 gives D'(x_T) = D(x_T) + w sigma^2 grad_x log r(x_T): DG's samples
    minus unguided ones are exactly the guidance, with the labels the sampler gives each index."""
    over = {"solver.steps": 1, "num_devices": 8}
    spec = resolve_sample(_config(tmp_path, dict(name="dg", disc_dir=imported, weight=1.5),
                                  **over))
    guided = SP.generate(spec)
    assert guided["mesh_size"] == 8 and guided["nfe"] == 1 and guided["aux"]["disc_calls"] == 1
    sig = float(guided["sigmas"][0])
    x_T = S.prior_sample(jax.random.key(spec.run.seed), (8, 16, 16, 3), sig)
    sigma, labels = jnp.full(8, sig), jnp.arange(8) % 4       # labels: cycle over 4 classes
    src = SP.load_source(spec)
    plain = src.make_denoise(src.state)(x_T, sigma, labels)   # the unguided Euler step to 0
    _, meta = dg_model.load(imported)
    g, _ = jax.jit(lambda p: DG.grad_log_ratio(meta["dg"].make_logit(p), x_T, sigma, labels))(
        meta["params"])
    want = 1.5 * sig**2 * np.asarray(g)
    diff = guided["samples"] - np.asarray(plain)
    assert np.abs(diff - want).max() < 1e-4 * np.abs(want).max()
    assert np.abs(want).max() > 1e-2   # the guidance moves the samples


@pytest.mark.skipif(EDM_PICKLE is None, reason="needs shared/fixtures/edm")
def test_diffrs_takes_the_imported_dg_discriminator(imported, tmp_path):
    """The fixture networks end to end: DiffRS on the EDM fixture network (DDPM++, 16 px, 10
    classes) with the imported DG fixture discriminator; its warm-up log-ratios are DG's logits
    on the base sampler's trajectories (one device: DiffRS's mesh invariance is
    tests/pipelines/test_train_discriminator.py's)."""
    cfg = _config(tmp_path / "r", dict(name="diffrs", disc_dir=imported, gamma=0.75, warmup=8,
                                       warmup_batch=8, max_iter=0, clamp_zero=True,
                                       warmup_seed=3),
                  **{"solver.steps": 2, "num_devices": 1, "source": "edm",
                     "model_dir": str(EDM_PICKLE)})
    spec = resolve_sample(cfg)
    out = SP.generate(spec)
    assert out["aux"]["complete"] == 1.0 and out["aux"]["nfe"] >= 3
    (logits,) = out["sampler"].warmup_cache.values()
    src = SP.load_source(spec)
    sig = jnp.asarray(out["sigmas"])
    cond = jnp.arange(8) % 10
    x_T = S.prior_sample(jax.random.key(3), (8, 16, 16, 3), sig[0])
    _, aux = S.sample(S.heun(), src.make_denoise(src.state), x_T, sig, None, cond,
                      return_trajectory=True)
    _, meta = dg_model.load(imported)
    n1 = sig.shape[0]
    direct = meta["apply"](meta["params"], aux.trajectory.reshape(n1 * 8, 16, 16, 3),
                           jnp.repeat(sig, 8), jnp.tile(cond, n1)).reshape(n1, 8).T
    np.testing.assert_allclose(logits, direct, rtol=1e-4, atol=1e-4)


def test_dg_refusals(imported, tmp_path):
    def dg_spec(guidance, **over):
        return resolve_sample(_config(tmp_path, dict(name="dg", **guidance), **over))

    with pytest.raises(SpecError, match="DG guidance wraps EDM's deterministic Heun"):
        dg_spec(dict(disc_dir=imported), **{"solver.name": "euler"})
    with pytest.raises(SpecError, match=r"'guidance\.classifier' = .*nope\.pt does not exist: "
                                        r"download DG's 32 px classifier.*https://drive"):
        dg_spec(dict(classifier=str(tmp_path / "nope.pt"), head=str(FIX / "dg_head_cond.pt")))
    with pytest.raises(SpecError, match="holds neither a finished `jaxdiff train-discriminator`"):
        dg_spec(dict(disc_dir=str(tmp_path)))
    with pytest.raises(SpecError, match="are exclusive"):
        dg_spec(dict(disc_dir=imported, head=str(FIX / "dg_head_cond.pt")))
    with pytest.raises(SpecError, match="time_min <= time_max"):
        dg_spec(dict(disc_dir=imported, time_min=0.5, time_max=0.2))
    with pytest.raises(SpecError, match=r"'guidance\.scale' is not a 'dg' setting"):
        dg_spec(dict(disc_dir=imported, scale=1.0))
    # Checked when the sampler is built, before anything is written.
    with pytest.raises(UserError, match=r"reads \(16, 16, 3\) images; the source samples "
                                        r"\(4, 4, 1\)"):
        SP.generate(resolve_sample(tiny_sample_config(
            tmp_path, source="gmm", guidance=dict(name="dg", disc_dir=imported),
            **{"solver.name": "heun"})))
    with pytest.raises(UserError, match=r"class-conditional \(10 classes\); the samples are "
                                        "unlabelled"):
        SP.generate(dg_spec(dict(disc_dir=imported), labels="none"))


def test_dgs_pt_files_load_with_dgs_architecture_at_the_source_size(imported, tmp_path,
                                                                     monkeypatch):
    """guidance.classifier / guidance.head: DG's architecture (here swapped for the tiny one)
    at the source's image size, the head's conditioning read from the file; the same arrays as
    the import. A train-discriminator run with a frozen extractor is refused for DG."""
    seen = {}

    def tiny_classifier(image_size=32):
        seen["image_size"] = image_size
        return dict(TINY["classifier"])

    monkeypatch.setattr(dg_model, "classifier_config", tiny_classifier)
    monkeypatch.setattr(dg_model, "head_config",
                        lambda cls, condition, num_class: dict(TINY["head"], condition=condition,
                                                               num_class=num_class))
    spec = resolve_sample(_config(tmp_path, dict(
        name="dg", classifier=str(FIX / "dg_classifier.pt"), head=str(FIX / "dg_head_cond.pt"))))
    assert spec.guidance.settings.weight == 2.0 and spec.guidance.settings.weight_2nd == 0.0
    ctx = SP.SamplingContext(SP.load_source(spec), "heun", 8, None, SP._labels(spec, 4))
    disc = SP._dg_discriminator(spec.guidance.settings, ctx)
    assert seen["image_size"] == 16 and disc.num_classes == 10
    assert disc.spec["sources"] == [str(FIX / "dg_classifier.pt"), str(FIX / "dg_head_cond.pt")]
    ref = dict(nnx.to_flat_state(dg_model.open_imported(imported).params))
    for k, v in nnx.to_flat_state(disc.params):
        np.testing.assert_array_equal(v.get_value(), ref[k].get_value())

    run = tmp_path / "disc_run"
    run.mkdir()
    (run / "discriminator.json").write_text(json.dumps({"extractor": "quality_net"}))
    with pytest.raises(UserError, match="frozen 'quality_net' extractor whose features carry no "
                                        "gradient"):
        SP.generate(resolve_sample(_config(tmp_path, dict(name="dg", disc_dir=str(run)))))
