"""Every data test uses a private cache directory (`tmp_path`); the CIFAR-10 cache-speed test
deliberately switches back to the default cache so that repeated runs stay fast."""

import pytest


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXDIFF_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"
