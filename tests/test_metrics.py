"""Metric rows and the finiteness check (`jaxdiff.metrics`)."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.metrics import MetricWriter, check_finite, read_metrics


# ---------------------------------------------------------------- metrics, images, labelled sets
def test_metric_writer_and_finite_check(tmp_path):
    w = MetricWriter(tmp_path, tensorboard=False)
    w.write(1, {"loss": jnp.float32(0.5), "acc": 0.25})
    w.write(2, {"loss": np.float64(0.25)})
    rows = read_metrics(tmp_path)
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 0.5), (2, 0.25)]
    with pytest.raises(FloatingPointError, match="loss at step 3"):
        check_finite(3, loss=np.nan)
