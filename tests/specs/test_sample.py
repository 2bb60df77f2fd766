"""`jaxdiff.specs.sample.resolve`: guidance settings typed with their defaults filled and noted,
solver aliases resolved, labels checked against the source, bad values named."""

import pytest

from jaxdiff.config_utils import build_config
from jaxdiff.diffusion.batch_samplers import DiffRSSettings
from jaxdiff.diffusion.reward_samplers import LidarSettings
from jaxdiff.specs.base import SpecError
from jaxdiff.specs.sample import resolve


def test_diffrs_defaults_are_filled_and_noted(tmp_path):
    spec = resolve(build_config("sample_digits", [
        ("source", "gmm"), ("labels", "none"), ("guidance", "{'name': 'diffrs', 'disc_dir': 'd'}")]))
    s = spec.guidance.settings
    assert isinstance(s, DiffRSSettings) and s.gamma == 0.75 and s.warmup == 256
    assert s.disc_dir.endswith("/d")
    notes = "\n".join(spec.resolution.notes)
    assert "guidance.gamma = 0.75  (DiffRSSettings default)" in notes
    assert spec.resolution.config["guidance"]["warmup_batch"] == 128


def test_lidar_settings_and_solver_alias():
    spec = resolve(build_config("lidar_digits", [("source", "gmm"), ("labels", "none"),
                                                 ("solver.name", "edm_stochastic")]))
    assert spec.solver.name == "edm" and set(spec.solver.hparams) == {"s_churn", "s_tmin",
                                                                      "s_tmax", "s_noise"}
    s = spec.guidance.settings
    assert isinstance(s, LidarSettings) and s.num_lookahead == 50 and s.window == (0.0, 1e9)
    assert s.reward.target == 3 and s.reward.quality["width"] == 32


@pytest.mark.parametrize("config,over,words", [
    ("sample_digits", {"source": "gmm", "labels": "9"}, "'labels' = 9 outside"),
    ("sample_digits", {"source": "gmm", "solver.steps": "0"}, "'solver.steps' = 0 must be >= 1"),
    ("sample_digits", {"model_dir": "/nonexistent"}, "'model_dir': model run directory"),
    ("lidar_digits", {"source": "gmm", "guidance.subset": "60"}, "'guidance.subset' = 60"),
    ("lidar_digits", {"source": "gmm", "guidance.reward.name": "ssim"},
     "'guidance.reward.name' = 'ssim'"),
    ("sample_digits_diffrs", {"source": "gmm", "solver.name": "euler"},
     "DiffRS wraps the deterministic Heun sampler"),
    ("sample_digits_diffrs", {"source": "gmm", "guidance.gamma": "1.5"},
     "'guidance.gamma' = 1.5 must be <= 1"),
    ("sample_digits_diffrs", {"source": "gmm", "guidance.warmup": "100"},
     "'guidance.warmup' / 'guidance.warmup_batch'"),
    ("lidar_digits", {"source": "gmm", "guidance.name": "fk", "guidance.num_particles": "3"},
     "'guidance.num_particles' = 3 must divide 'batch_size' = 128"),
    ("lidar_digits", {"source": "gmm", "guidance.name": "svdd", "solver.name": "heun"},
     "'solver.name' = 'heun' must be 'ddim'"),
    ("lidar_digits", {"source": "gmm", "guidance.scale": "-1"}, "'guidance.scale' must be"),
    ("sample_digits", {"source": "gmm", "quality.epochs": "0"}, "'quality.epochs' = 0 must be >= 1"),
])
def test_bad_values_name_the_key(config, over, words):
    with pytest.raises(SpecError, match=words):
        resolve(build_config(config, list(over.items())))


def test_quality_section_checked_and_kept_as_written():
    """The quality net's values are its cache key: kept as written; unknown keys named."""
    spec = resolve(build_config("sample_digits", [("source", "gmm")]))
    assert spec.quality.enabled and spec.quality.num_real == 0
    assert spec.quality.net == dict(seed=0, width=32, feature_dim=64, epochs=20, batch_size=128,
                                    lr=1e-3)
    config = build_config("sample_digits", [("source", "gmm")])
    config.quality.widht = 16
    with pytest.raises(SpecError, match="'quality.widht' is unknown"):
        resolve(config)
