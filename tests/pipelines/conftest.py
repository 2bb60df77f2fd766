"""Fixtures shared by the pipeline tests: one tiny trained denoiser, one quality-net cache."""

import pytest

from jaxdiff.pipelines import train_denoiser
from jaxdiff.specs.train_denoiser import resolve

from tests.helpers import tiny_train_denoiser_config


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """One uninterrupted 6-step run on the 8 fake devices (batch sharded 16 / 8):
    `(run_dir, results)`."""
    run_dir = tmp_path_factory.mktemp("td") / "full"
    out = train_denoiser.run(resolve(tiny_train_denoiser_config(run_dir)))
    return str(run_dir), out


@pytest.fixture(scope="session")
def qcache(tmp_path_factory):
    """One quality-net cache for the session (the tiny net is trained once)."""
    return str(tmp_path_factory.mktemp("qcache"))
