"""The fit check (`jaxdiff plan`, `--plan`, the check before every distill run): the figures
printed are the compiled program's own (`memory_analysis`), FLOPs count loops by their trip
counts, a run that does not fit stops with exit 2 naming the knobs and writes nothing,
`class_chunk` 0 picks a smaller chunk under a small budget and runs to the same loss, and a
plan needs shapes, not data."""

import contextlib
import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import cli
from jaxdiff.errors import UserError
from jaxdiff.pipelines import distill as D
from jaxdiff.pipelines import plan as P
from jaxdiff.specs import distill as S

from tests.helpers import tiny_distill_config

# pixel DM on 8x8 digits with 8 real images per class, no DSA: compiles in ~1 s on one device
TINY = {"param.name": "pixel", "ipc": 1, "eval.num_runs": 0, "iterations": 2,
        "opt.name": "sgd", "opt.lr": 0.5, "loss.dsa_strategy": "none"}


def _cli(argv, env=None):
    """`jaxdiff ARGV` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as e:
                code = e.code
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return code, out.getvalue(), err.getvalue()


def _argv(run_dir, **over):
    base = {"data.image_size": 8, "model.width": 8, "loss.batch_real": 8, "progress": False,
            "num_devices": 1, "run_dir": run_dir, **TINY, **over}
    return [f"--config.{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def chunk_plans():
    """The tiny DM step's fit check with all classes at once and one class at a time (one
    device): (spec, {chunk: Planned})."""
    spec = S.resolve(tiny_distill_config("/tmp/unused", **TINY))
    return spec, {c: D.plan(D._with_chunk(spec, c)) for c in (1, 10)}


# ------------------------------------------------------------------------------- pieces
def test_jaxpr_flops_count_loops_by_trip_count_and_match_xla_without_loops():
    x = jax.ShapeDtypeStruct((64, 64), jnp.float32)
    one = 2 * 64**3
    scan = lambda a: jax.lax.scan(lambda c, _: (c @ c, None), a, None, length=7)[0]  # noqa: E731
    groups = lambda a: jax.lax.map(lambda r: r @ a, a.reshape(4, 16, 64))  # noqa: E731
    branch = lambda a: jax.lax.cond(a[0, 0] > 0, lambda: a @ a @ a, lambda: a)  # noqa: E731
    for fn, want in ((lambda a: a @ a, one), (scan, 7 * one), (groups, one), (branch, 2 * one)):
        assert P.jaxpr_flops(jax.make_jaxpr(fn)(x))[0] == want
    # XLA counts a loop body once: the same matmul in a scan of 7 reads as one
    compiled = jax.jit(scan).lower(x).compile()
    assert one <= compiled.cost_analysis()["flops"] < 2 * one   # (+ the loop counter's adds)
    mm = jax.jit(lambda a: a @ a).lower(x).compile()
    assert mm.cost_analysis()["flops"] == P.jaxpr_flops(jax.make_jaxpr(lambda a: a @ a)(x))[0]
    # a convolution: 2 x batch x output channels x input channels x taps on the image ("SAME"
    # 3x3 on 8 pixels: 8 x 3 taps per axis less the 2 that fall off the edges)
    img = jax.ShapeDtypeStruct((2, 5, 8, 8), jnp.float32)     # NCHW
    ker = jax.ShapeDtypeStruct((6, 5, 3, 3), jnp.float32)     # OIHW
    conv = lambda a, k: jax.lax.conv(a, k, (1, 1), "SAME")  # noqa: E731
    assert P.jaxpr_flops(jax.make_jaxpr(conv)(img, ker))[0] == 2 * (2 * 6) * 5 * (8 * 3 - 2)**2
    # taps on padding or on the holes of lhs dilation do no work (as in XLA's count): the
    # transposed convolutions of second derivatives pad a small input a lot
    nhwc = ("NHWC", "HWIO", "NHWC")
    for a, k, kw in (((2, 3, 3, 4), (8, 8, 4, 6), dict(padding=((7, 7), (7, 7)))),
                     ((2, 8, 8, 5), (3, 3, 5, 6), dict(padding=((2, 2), (2, 2)),
                                                       lhs_dilation=(2, 2))),
                     ((2, 16, 16, 5), (3, 3, 5, 6), dict(padding="VALID",
                                                         window_strides=(2, 2)))):
        fn = lambda x, w, kw=kw: jax.lax.conv_general_dilated(  # noqa: E731
            x, w, kw.get("window_strides", (1, 1)), kw["padding"],
            lhs_dilation=kw.get("lhs_dilation"), dimension_numbers=nhwc)
        xs = [jax.ShapeDtypeStruct(a, jnp.float32), jax.ShapeDtypeStruct(k, jnp.float32)]
        assert P.jaxpr_flops(jax.make_jaxpr(fn)(*xs))[0] == \
            jax.jit(fn).lower(*xs).compile().cost_analysis()["flops"]
    f, open_loops = P.jaxpr_flops(jax.make_jaxpr(
        lambda a: jax.lax.while_loop(lambda c: c[0, 0] < 9, lambda c: c @ c, a))(x))
    assert (f, open_loops) == (one, 1)


def test_sizes_options_and_binary_search():
    assert P.parse_size("16GiB", "k") == 16 * 2**30
    assert P.parse_size("500MB", "k") == 500e6 and P.parse_size("2e9", "k") == 2e9
    with pytest.raises(UserError, match="not a memory size"):
        P.parse_size("lots", "plan.device_memory")
    o = P.options_from([("accelerator", "H200"), ("fraction", "0.5"), ("precision", "bf16"),
                        ("device_memory", "1KiB")])
    assert o == P.PlanOptions("h200", 0.5, "bf16", 1024.0)
    for bad, msg in ((("fraction", "2"), "fraction of peak"), (("accelerator", "x1"), "h200"),
                     (("speed", "1"), "Valid keys: plan.accelerator")):
        with pytest.raises(UserError, match=msg):
            P.options_from([bad])
    calls = []

    def fits(c):
        calls.append(c)
        return c <= 20

    assert P.largest_fitting(P.divisors(200), fits) == 20
    assert calls[0] == 200 and len(calls) <= 5
    assert P.largest_fitting([1, 2, 5, 10], lambda c: False) is None


def test_abstract_inputs_are_the_run_placement_and_the_run_reuses_the_compile(tmp_path):
    """pixel on 2 devices (10 instances and the real batches split over the mesh): the abstract
    state has the shardings of the state `build` places, and after the fit check the run's
    steps do not compile again (one entry in the jitted step's cache)."""
    from jaxdiff import data as jdata
    spec = S.resolve(tiny_distill_config(tmp_path, **{**TINY, "num_devices": 2}))
    planned = D.plan(spec, P.PlanOptions(), for_run=True)
    abstract = D.abstract_inputs(planned.spec, planned.program)
    b = D.build(planned.spec, jdata.load("digits", "train", image_size=8),
                program=planned.program)
    real, fake = jax.tree.leaves(b.state), jax.tree.leaves(abstract[0])
    assert [(a.shape, a.dtype, a.sharding) for a in real] == \
        [(a.shape, a.dtype, a.sharding) for a in fake]
    assert any(not a.sharding.is_fully_replicated for a in real)   # the sharded case is tested
    state, _ = b.step_fn(b.state, np.int32(0))
    b.step_fn(state, np.int32(1))
    assert planned.program.jitted._cache_size() == 1


# ------------------------------------------------------------------------------- commands
def test_plan_prints_the_compiled_programs_own_figures_and_writes_nothing(tmp_path, chunk_plans):
    """`--plan` with a budget the step exceeds: the figures printed are XLA's for the program
    (the fixture's, compiled for the same spec), the verdict and the knobs; exit 0, no run."""
    run_dir = tmp_path / "run"
    code, out, _ = _cli(["distill", "--config", "quickstart", "--plan",
                         "--config.plan.accelerator=a100", "--config.plan.device_memory=4KiB",
                         *_argv(str(run_dir), class_chunk=1)])
    assert code == 0 and not run_dir.exists()
    spec, plans = chunk_plans
    planned = plans[1]
    compiled = planned.program.jitted.lower(
        *D.abstract_inputs(planned.spec, planned.program)).compile()   # jit's cache: no compile
    m, s = compiled.memory_analysis(), planned.plan.steps[0]
    assert (s.argument, s.output, s.alias, s.temp, s.code) == (
        m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes,
        m.temp_size_in_bytes, m.generated_code_size_in_bytes)
    assert s.xla_flops == compiled.cost_analysis()["flops"]
    assert s.peak == s.argument + s.output - s.alias + s.temp + s.code
    for what in ("parameters (pixel, 10 instances)", "optimiser state", "synthetic set",
                 "real batch (8 per class, uint8)", "FLOPs per iteration",
                 f"arguments {P._human(s.argument)}, outputs {P._human(s.output)}",
                 f"XLA temporaries {P._human(s.temp)}",
                 f"total (largest step peak) {P._human(s.peak)} of 4.00 KiB",
                 "DOES NOT FIT", "to fit: loss.batch_real (now 8); class_chunk (now 1",
                 "NVIDIA A100 SXM 80GB at 30% of 19.5 TFLOP/s fp32",
                 "plan only: nothing was run or written"):
        assert what in out, what
    # 10 classes x 8 images of 8x8x1 uint8; 10 decoded images of 8x8x1 float32
    sections = dict(planned.plan.sections)
    assert sections["real batch (8 per class, uint8)"] == 10 * 8 * 64
    assert sections["synthetic set (decoded, float32)"] == 10 * 64 * 4
    seconds, _ = planned.plan._replace(options=P.PlanOptions("a100")).seconds_per_iteration()
    assert seconds == pytest.approx(s.flops / (0.3 * 19.5e12))


def test_a_run_that_does_not_fit_exits_2_naming_the_knobs_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    code, _, err = _cli(["distill", "--config", "quickstart", *_argv(str(run_dir), class_chunk=1)],
                        env={P.MEMORY_ENV: "4KiB"})
    assert code == 2 and not run_dir.exists()
    for what in ("does not fit", "allows 4.00 KiB", P.MEMORY_ENV, "loss.batch_real (now 8)",
                 "class_chunk (now 1", "more devices (now 1", "Nothing was run or written"):
        assert what in err, (what, err)


def test_auto_class_chunk_fits_a_small_budget_and_runs_to_the_same_loss(tmp_path, chunk_plans,
                                                                       monkeypatch):
    """The accelerators' rule, a budget between the one-class and the all-classes peaks:
    `class_chunk` 0 picks a chunk below 10 that fits (noted in config.json), and the run equals
    one with all classes at once. (On CPU devices auto is 1: `test_auto_class_chunk_on_cpu`.)"""
    monkeypatch.setattr(D, "small_chunks_first", lambda devices: False)
    _, plans = chunk_plans
    low, high = plans[1].plan.peak, plans[10].plan.peak
    assert low < high
    budget = (low + high) // 2
    auto = D.run(S.resolve(tiny_distill_config(tmp_path / "auto", **TINY)),
                 P.PlanOptions(device_memory=float(budget)))
    whole = D.run(S.resolve(tiny_distill_config(tmp_path / "all", class_chunk=10, **TINY)))
    with open(tmp_path / "auto" / "config.json") as f:
        resolved = json.load(f)["resolved"]
    note = next(n for n in resolved if n.startswith("class_chunk -> "))
    chunk = int(note.split()[2])
    assert chunk in (1, 2, 5) and "(auto: the largest divisor of 10 classes" in note, note
    assert auto["final_loss"] == pytest.approx(whole["final_loss"], rel=1e-5)
    a = np.load(tmp_path / "auto" / "params.npz")["params/images"]
    b = np.load(tmp_path / "all" / "params.npz")["params/images"]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_auto_class_chunk_on_cpu(chunk_plans):
    """On CPU devices `class_chunk` 0 is one class at a time (one compile), noted as such."""
    spec, plans = chunk_plans
    got = D.plan(spec)
    assert got.spec.loss.class_chunk == 1
    assert got.plan.steps[0].peak == plans[1].plan.steps[0].peak
    assert got.spec.resolution.notes[-1] == (
        "class_chunk -> 1  (auto on CPU: one class at a time, fastest and smallest on XLA:CPU; "
        "1 compiled)")


def test_plan_needs_shapes_not_data(tmp_path):
    """CIFAR-10 from an empty data directory and a TM expert store that does not exist: the
    registry's shapes and the spec's model stand in, each said in a note."""
    empty = tmp_path / "no_data"
    empty.mkdir()
    code, out, err = _cli(["plan", "--config", "distill_cifar10_tm_cpu", "--config.ipc=1",
                           "--config.param.name=pixel", "--config.model.width=8",
                           "--config.model.depth=1", f"--config.data.data_dir={empty}",
                           f"--config.loss.tm.buffer_dir={tmp_path / 'no_experts'}",
                           "--config.loss.tm.syn_steps=2", "--config.loss.tm.batch_syn=10",
                           "--config.loss.dsa_strategy=none",
                           "--config.num_devices=1", f"--config.run_dir={tmp_path / 'run'}"])
    assert code == 0, err
    assert "registry's shapes" in out and "the TM student is the spec's `model`" in out
    assert "parameters (pixel, 10 instances)" in out and "expert segment" in out
    # the student's parameters (ConvNet-D1 width 8 on 32x32x3), twice (start, target), float32
    from flax import nnx
    from jaxdiff.models.classifiers import classifier_factory
    net = classifier_factory("convnet", (32, 32, 3), 10, depth=1, width=8)(nnx.Rngs(0))
    p = sum(a.size for a in jax.tree.leaves(nnx.state(net, nnx.Param)))
    assert p > 16 * 16 * 8 * 10
    line = next(x for x in out.splitlines() if "expert segment (start + target)" in x)
    assert line.split()[-2:] == P._human(2 * 4 * p).split()
    assert not (tmp_path / "run").exists()


def test_experts_plan_counts_an_epoch_of_steps(tmp_path):
    """`jaxdiff plan --config experts_digits` (the command read from the preset's name): an
    iteration is an epoch of the group, 6 steps of 256 of the 1,438 digits."""
    code, out, err = _cli(["plan", "--config", "experts_digits", "--config.parallel=2",
                           "--config.num_experts=2", "--config.dsa_strategy=none",
                           "--config.model.width=8", "--config.num_devices=1",
                           "--config.plan.device_memory=64KiB",
                           f"--config.buffer_dir={tmp_path / 'experts'}"])
    assert code == 0, err
    assert "expert parameters (2 x" in out and "real batch (2 x 256 images)" in out
    step = next(x for x in out.splitlines() if "FLOP per call per device" in x)
    per_call = step.split("; ")[1].split(" per call")[0]
    total = out.split("FLOPs per iteration per device: ")[1].splitlines()[0]
    value = lambda t: float(t.split()[0]) * {"MFLOP": 1e6, "GFLOP": 1e9}[t.split()[1]]  # noqa
    assert value(total) == pytest.approx(6 * value(per_call), rel=1e-2)   # 3 digits printed
    assert "DOES NOT FIT" in out and "to fit: parallel (now 2 experts per group)" in out
    assert not (tmp_path / "experts").exists()
