"""Shared oracles, reference implementations and tiny fixtures of the test suite
(one place; test files import from here, never from each other)."""

from __future__ import annotations


# ------------------------------------------------------------ from tests/test_models.py

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff import models


def conv_ref(x, w, b=None, stride=1, pad=1):
    """Reference NHWC x HWIO cross-correlation (tests may call lax directly; models may not)."""
    y = jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    return y if b is None else y + b


# Jitted model construction and calls: eager NNX code runs op by op, compiling every random
# draw and layer separately, which dominates this file's runtime on a small CPU.
call_model = nnx.jit(lambda m, x: m(x))


embed_model = nnx.jit(lambda m, x: m.embed(x))


def abstract_count(make):
    return models.num_params(nnx.eval_shape(make))


def norm_ref(kind, h, layer):
    if kind == "instancenorm":
        m = h.mean((1, 2), keepdims=True)
        v = ((h - m) ** 2).mean((1, 2), keepdims=True)
        return (h - m) / jnp.sqrt(v + 1e-5) * layer.scale[...] + layer.bias[...]
    if kind == "batchnorm":  # train mode: batch statistics over N, H, W (biased)
        m = h.mean((0, 1, 2), keepdims=True)
        v = ((h - m) ** 2).mean((0, 1, 2), keepdims=True)
        return (h - m) / jnp.sqrt(v + 1e-5) * layer.scale[...] + layer.bias[...]
    if kind == "layernorm":  # PyTorch LayerNorm([C, H, W]): over everything of a sample
        m = h.mean((1, 2, 3), keepdims=True)
        v = ((h - m) ** 2).mean((1, 2, 3), keepdims=True)
        return (h - m) / jnp.sqrt(v + 1e-5) * layer.scale[...] + layer.bias[...]
    if kind == "groupnorm":  # 4 groups of consecutive channels
        n, hh, ww, c = h.shape
        g = h.reshape(n, hh, ww, 4, c // 4)
        m = g.mean((1, 2, 4), keepdims=True)
        v = ((g - m) ** 2).mean((1, 2, 4), keepdims=True)
        out = ((g - m) / jnp.sqrt(v + 1e-5)).reshape(h.shape)
        return out * layer.scale[...] + layer.bias[...]
    assert kind == "none"
    return h


# ------------------------------------------------------------ from tests/test_ops_conv.py
import functools

import jax
import jax.numpy as jnp
import numpy as np


def assert_close(actual, desired, tol):
    """max |a - d| <= tol * max(1, max |d|), leaf by leaf (float32 round-off of long sums)."""
    for a, d in zip(jax.tree.leaves(actual), jax.tree.leaves(desired)):
        a, d = np.asarray(a), np.asarray(d)
        assert a.shape == d.shape
        scale = max(1.0, float(np.max(np.abs(d))))
        err = float(np.max(np.abs(a - d)))
        assert err <= tol * scale, f"max error {err:.3g} > {tol:.1g} * {scale:.3g}"


# Each test compiles ONE program (data generation, our path and the reference together):
# on the 2-core CI machine compilation, not execution, is what these tests spend. LLVM
# optimisation level 0 cuts it 4-5x; the HLO (and so the formulations under test) is the
# same, only the machine code is less optimised. The HLO-structure test keeps the defaults.
jit_o0 = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


# ------------------------------------------------------------ from tests/pipelines/test_distill_src.py

import numpy as np

from jaxdiff.config_utils import build_config


def tiny_distill_config(run_dir, **over):
    base = {
        "data.image_size": "8", "ipc": "2", "iterations": "4", "log_every": "2", "checkpoint_every": "2",
        "model.width": "8", "loss.batch_real": "8", "eval.epochs": "2", "eval.num_runs": "1",
        "eval.compare_random": "False", "param.ddif.warmup_steps": "5", "progress": "False",
        "run_dir": str(run_dir), "num_devices": "1",
    }
    base.update({k: str(v) for k, v in over.items()})
    return build_config("quickstart", list(base.items()))
