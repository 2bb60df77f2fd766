"""Shared FID test fixtures: the recorded files of tests/fixtures/fid and the FID Inception
built from their seeded stand-in weights (built once per session: 24M parameters)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fid"


@pytest.fixture(scope="session")
def fid_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def standard_table() -> dict:
    """torch name -> (shape, dtype) of the standard weight file's state dict."""
    entries = json.loads((FIXTURES / "pt_inception_state_dict.json").read_text())["entries"]
    return {name: (tuple(shape), dtype) for name, shape, dtype in entries}


@pytest.fixture(scope="session")
def seeded_sd(standard_table):
    spec = importlib.util.spec_from_file_location("fid_seeded_weights",
                                                  FIXTURES / "seeded_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.seeded_state_dict({k: s for k, (s, _) in standard_table.items()})


@pytest.fixture(scope="session")
def net(seeded_sd):
    from jaxdiff.fid import inception
    return inception.from_state_dict(seeded_sd, "seeded")


@pytest.fixture(scope="session")
def fx() -> dict:
    with np.load(FIXTURES / "fid_features.npz") as f:
        return dict(f)
