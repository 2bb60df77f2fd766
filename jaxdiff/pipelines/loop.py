"""A resumable training loop: jitted steps, metrics, progress, NaN guard, Orbax checkpoints.

Every long-running driver (distillation, expert training, denoiser training) runs through
`run_loop`, so all of them resume the same way: the full loop state — a pytree holding
parameters, optimiser state, the step counter's RNG key and anything else the step needs — is
saved every `checkpoint_every` steps together with the config fingerprint and the metrics so far,
and `resume=True` continues from the latest checkpoint to the same result as an uninterrupted
run (the step function must derive its randomness from the step index, e.g.
`fold_in(key, step)`, never from Python state).

A resume may run on another mesh (a changed `num_devices`, another machine, 2 processes x 4
devices after 1 x 8): the checkpoint is restored onto this run's placement, a line names both
meshes, and the checkpoints record which steps ran on which mesh (`meta["meshes"]`), so the run
is not relabelled as one on the last mesh.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxdiff.checkpoint import Checkpointer, describe_mesh
from jaxdiff.distributed import to_host
from jaxdiff.metrics import MetricWriter, check_finite, check_growth
from jaxdiff.sharding import settle_cpu_step

StepFn = Callable[[Any, Any], tuple[Any, Mapping[str, jax.Array]]]


def _all_finite(tree) -> bool:
    """Whether every floating leaf is finite: each leaf reduced where it lives (one scalar to the
    host, which also works for arrays sharded over several processes)."""
    leaves = [x for x in jax.tree.leaves(tree)
              if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)]
    return all(bool(to_host(jnp.all(jnp.isfinite(x)))) for x in leaves)


def run_loop(
    step_fn: StepFn,
    init_state: Any,
    num_steps: int,
    *,
    run_dir: str,
    fingerprint: str | tuple[str, ...],
    checkpoint_every: int = 100,
    log_every: int = 10,
    resume: bool = False,
    desc: str = "train",
    on_log: Callable[[int, Any, dict], None] | None = None,
    progress: bool = True,
    max_to_keep: int = 2,
    divergence_limit: float = 0.0,
    divergence_key: str = "loss",
) -> tuple[Any, list[dict]]:
    """Run `state, metrics = step_fn(state, step)` for steps `[start, num_steps)`.

    Args:
      step_fn: jitted `(state, step: int32 scalar) -> (state, {name: scalar})`.
      init_state: the state at step 0 (pytree of arrays).
      num_steps: total steps of the run.
      run_dir: checkpoints go to `<run_dir>/checkpoints`, metrics to `<run_dir>/metrics.jsonl`.
      fingerprint: the run's config fingerprint (`jaxdiff.checkpoint.config_fingerprint`), or
        the fingerprints a resume accepts (a spec's `resolution.resume_fingerprints`, which
        leave out the device count): a resume refuses checkpoints with another one.
      checkpoint_every: save the full state every this many steps (and at the end).
      log_every: read metrics back to the host (a sync) every this many steps; NaN/Inf in any
        metric stops the run with a message naming the step.
      resume: continue from the latest checkpoint in `run_dir` if there is one.
      on_log: optional hook called at log steps (e.g. periodic evaluation, image grids); it may
        return a dict of extra metrics to log.
      divergence_limit: stop (`metrics.DivergenceError`, before `on_log` and the checkpoint of
        that step) when the logged `divergence_key` exceeds this many times its first logged
        value (kept across a resume); 0: never.

    Returns:
      (final state, list of logged metric rows).
    """
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    run_dir = os.path.abspath(run_dir)
    ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), max_to_keep=max_to_keep,
                        fingerprint=fingerprint)
    writer = MetricWriter(run_dir)
    state, start, history = init_state, 0, []
    mesh = describe_mesh(init_state)
    meshes = [[0, mesh]]          # [first step, mesh] of each stretch of the run
    if resume and ckpt.latest_step() is not None:
        start, state, meta = ckpt.restore(init_state)
        history = list(meta.get("metrics", []))
        meshes = meta.get("meshes") or [[0, meta["mesh"]]]
        if meshes[-1][1] != mesh:
            meshes.append([start, mesh])
        dropped = writer.drop_after(start)  # logged after the checkpoint: they run again
        print(f"[{desc}] resumed from {ckpt.directory}/{start}"
              + (f" ({dropped} metric rows after step {start} dropped)" if dropped else ""),
              flush=True)
        if meta["mesh"] not in (None, mesh):
            print(f"[{desc}] checkpoint written on a mesh of {meta['mesh']}; this run has "
                  f"{mesh}: the state is placed on this run's mesh. Steps before {start} ran "
                  "on the other, so the result equals an uninterrupted run's up to the rounding "
                  "of reductions split another way over the devices", flush=True)
    elif not resume and ckpt.latest_step() is not None:
        ckpt.close()
        raise FileExistsError(f"{ckpt.directory} already holds checkpoints; pass --resume to "
                              "continue that run, or choose another run_dir")
    bar = tqdm(total=num_steps, initial=start, desc=desc, disable=not progress)
    last_saved = start
    try:
        for step in range(start, num_steps):
            state, metrics = step_fn(state, np.int32(step))
            settle_cpu_step(metrics)   # one step in flight on several CPU devices (see there)
            done = step + 1
            if done % log_every == 0 or done == num_steps:
                row = {k: float(v) for k, v in to_host(dict(metrics)).items()}
                check_finite(step, **row)
                first = next((h[divergence_key] for h in history if divergence_key in h), None)
                if first is not None and divergence_key in row:
                    check_growth(done, divergence_key, row[divergence_key], first,
                                 divergence_limit)
                if on_log is not None:
                    row.update(on_log(done, state, row) or {})
                writer.write(done, row)
                history.append({"step": done, **row})
                bar.set_postfix({k: f"{v:.4g}" for k, v in list(row.items())[:4]})
            bar.update(1)
            if done % checkpoint_every == 0 or done == num_steps:
                if not _all_finite(state):
                    raise FloatingPointError(f"non-finite values in the loop state at step {step}; "
                                             f"not saving. Last good checkpoint: step {last_saved}")
                ckpt.save(done, state, {"metrics": history, "meshes": meshes})
                last_saved = done
    finally:
        bar.close()
        ckpt.close()
        writer.close()
    return state, history
