"""The fit check: a command's step functions compiled for the current mesh without running them.

`jaxdiff plan --config PRESET` (or `--plan` on a command) and the start of every planned run
(before the run directory, the data and any warm-up) go through here:

    programs = [Program(name, jitted, abstract args, ...)]   # each pipeline's `plan` builds them
    plan = make_plan(command, programs, sections, ...)      # lower + compile, no data, no run
    print(plan.format()); plan.check()                      # PlanError when it does not fit

Commands with a fit check: `distill` (`pipelines.distill.plan`, which also chooses
`class_chunk` 0 by binary search over divisors of the class count) and `experts`
(`pipelines.experts.plan`). Options are `--config.plan.*` (`PlanOptions`), never config keys.

Abstract args are `jax.ShapeDtypeStruct`s with the shardings the run gives its arrays, so the
compiled program is the one the run executes (the run reuses the compile through jit's cache).

Per device, from XLA itself: `compiled.memory_analysis()` (arguments, outputs, the part of the
outputs aliasing donated arguments, temporaries, generated code); a step's peak is arguments +
outputs - aliased + temporaries + code, plus `resident` bytes that live across the step without
being its arguments. FLOPs: XLA's `compiled.cost_analysis()` counts a loop body once, whatever
its trip count (TM's student steps, `lax.map` over class chunks), so the time estimate uses
`jaxpr_flops`: matmul and convolution FLOPs of the traced program, loop bodies times their trip
counts (global; per device = / devices). Time per iteration = FLOPs per device / (fraction x the
accelerator's peak FLOP/s at the chosen precision): a lower bound at that efficiency.

The budget per device (`device_budget`): `JAXDIFF_PLAN_DEVICE_MEMORY` or `--config.plan.
device_memory` (bytes, or "16GiB"/"500MB"), else a named accelerator's memory (`jaxdiff plan`
only: a run checks the device it runs on), else `device.memory_stats()["bytes_limit"]`, else on
CPU the physical RAM / (processes x local devices), said so in the output.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from jaxdiff import distributed
from jaxdiff.errors import UserError


class Accelerator(NamedTuple):
    """Peak dense FLOP/s by precision (None: no such unit) and memory per chip (vendor figures)."""

    label: str
    bf16: float
    tf32: float | None
    fp32: float
    memory: float          # bytes of HBM per chip
    bandwidth: float       # bytes/s
    kinds: tuple[str, ...] # substrings of `device.device_kind` (lower case) that mean this chip


T, G = 1e12, 1e9
ACCELERATORS: dict[str, Accelerator] = {
    # NVIDIA H100 Tensor Core GPU datasheet (SXM): FP32 67 TFLOPS; TF32 989 and BF16 1,979
    # TFLOPS *with sparsity* (dense: half); 80 GB HBM3 at 3.35 TB/s.
    "h100": Accelerator("NVIDIA H100 SXM", 989.5 * T, 494.7 * T, 67 * T, 80 * G, 3.35 * T,
                        ("h100",)),
    # NVIDIA H200 Tensor Core GPU product page (SXM): the H100's compute (FP32 67, TF32 989 and
    # BF16 1,979 TFLOPS with sparsity); 141 GB HBM3e at 4.8 TB/s.
    "h200": Accelerator("NVIDIA H200 SXM", 989.5 * T, 494.7 * T, 67 * T, 141 * G, 4.8 * T,
                        ("h200",)),
    # NVIDIA A100 Tensor Core GPU datasheet (SXM 80GB): FP32 19.5, TF32 156, BF16 312 TFLOPS
    # (dense; 312 / 624 with sparsity); 80 GB HBM2e at 2,039 GB/s.
    "a100": Accelerator("NVIDIA A100 SXM 80GB", 312 * T, 156 * T, 19.5 * T, 80 * G, 2.039 * T,
                        ("a100",)),
    # Google Cloud TPU docs (system architecture, per chip). TPUs have no float32 matrix unit:
    # float32 matmuls at jax's Precision.HIGHEST take six bf16 passes, so fp32 = bf16 / 6 here
    # (an assumption for the estimate, not a vendor figure).
    # v4: 275 TFLOPS bf16, 32 GiB HBM2 at 1,200 GB/s.
    "v4": Accelerator("TPU v4", 275 * T, None, 275 * T / 6, 32 * 2**30, 1.2 * T, ("tpu v4",)),
    # v5e: 197 TFLOPS bf16, 16 GB HBM2 at 819 GB/s.
    "v5e": Accelerator("TPU v5e", 197 * T, None, 197 * T / 6, 16 * G, 0.819 * T,
                       ("tpu v5 lite", "tpu v5e")),
    # v5p: 459 TFLOPS bf16, 95 GB HBM2e at 2,765 GB/s.
    "v5p": Accelerator("TPU v5p", 459 * T, None, 459 * T / 6, 95 * G, 2.765 * T,
                       ("tpu v5p", "tpu v5")),
    # v6e (Trillium): 918 TFLOPS bf16, 32 GB HBM at 1,640 GB/s.
    "v6e": Accelerator("TPU v6e", 918 * T, None, 918 * T / 6, 32 * G, 1.64 * T,
                       ("tpu v6 lite", "tpu v6e")),
}
PRECISIONS = ("fp32", "tf32", "bf16")
MEMORY_ENV = "JAXDIFF_PLAN_DEVICE_MEMORY"


class PlanOptions(NamedTuple):
    """`--config.plan.KEY=VALUE` (never part of a command's config, so never of its identity).

    Attributes:
      accelerator: a key of `ACCELERATORS` for the time estimate ("" = the current device's
        kind when the table knows it; else no time estimate). `jaxdiff plan` also compares the
        memory with that chip's when it is named and `device_memory` is not set.
      fraction: the fraction of peak FLOP/s the estimate assumes (0 < f <= 1).
      precision: "fp32" (the programs' dtype), "tf32" (NVIDIA's default for float32 matmuls
        and convolutions) or "bf16": which peak the estimate divides by.
      device_memory: the budget per device in bytes (0 = see the module docstring).
    """

    accelerator: str = ""
    fraction: float = 0.3
    precision: str = "fp32"
    device_memory: float = 0.0


def parse_size(text: str, what: str) -> float:
    """Bytes from "123", "1.5e9", "16GiB", "500 MB" (k/M/G/T: powers of 1000; Ki/Mi/Gi/Ti: 1024)."""
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([kKMGT]i?)?[bB]?\s*", str(text))
    try:
        value = float(m.group(1)) if m else float("nan")
    except ValueError:
        value = float("nan")
    if not value > 0 or math.isinf(value):
        raise UserError(f"{what} = {text!r} is not a memory size: give bytes or a number with "
                        "a unit, e.g. 16GiB, 500MB, 2e9")
    unit = (m.group(2) or "").upper().replace("I", "i")
    scale = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[unit]
    return value * scale


def options_from(overrides: Sequence[tuple[str, str]]) -> PlanOptions:
    """`PlanOptions` from `(key, text)` pairs, keys without the `plan.` prefix; UserError naming
    a bad key or value."""
    out = PlanOptions()
    for key, text in overrides:
        name = f"plan.{key}"
        if key == "accelerator":
            value = str(text).strip().lower()
            if value and value not in ACCELERATORS:
                raise UserError(f"config key {name!r} = {text!r} is not one of "
                                f"{sorted(ACCELERATORS)} ('' = the current device)")
        elif key == "fraction":
            try:
                value = float(text)
            except ValueError:
                value = float("nan")
            if not 0 < value <= 1:
                raise UserError(f"config key {name!r} = {text!r} must be a fraction of peak in "
                                "(0, 1], e.g. 0.3")
        elif key == "precision":
            value = str(text).strip().lower()
            if value not in PRECISIONS:
                raise UserError(f"config key {name!r} = {text!r} is not one of {list(PRECISIONS)}")
        elif key == "device_memory":
            value = 0.0 if str(text).strip() in ("0", "") else parse_size(text, f"config key {name!r}")
        else:
            raise UserError(f"unknown config key {name!r}. Valid keys: "
                            + ", ".join(f"plan.{k}" for k in PlanOptions._fields))
        out = out._replace(**{key: value})
    return out


# ------------------------------------------------------------------------------- resolution
def resolve_for_plan(resolve: Callable, config) -> tuple[Any, list[str]]:
    """`(resolve(config), notes)` for a plan, which needs shapes, not data: where the dataset is
    absent (or an ImageNet directory lacks the subset's classes) the registry's shapes stand
    in, class sizes the data alone knows are taken as unlimited (`batch_real` not cut), and a
    missing TM expert store is allowed (the plan's student is the spec's `model`). Each
    substitution is a note. A run resolves with every check (`resolve` alone).

    How: the resolver's three look-ups of inputs (`jaxdiff.data.check_available`,
    `jaxdiff.data.train_class_counts`, the TM spec's `open_experts`) are wrapped for the
    duration of the call, so nothing below the plan changes."""
    from jaxdiff import data as jdata
    from jaxdiff.specs import distill as distill_spec

    notes: list[str] = []
    check, counts, experts = (jdata.check_available, jdata.train_class_counts,
                              distill_spec.open_experts)

    def check_available(name, data_dir=None):
        try:
            check(name, data_dir)
        except UserError as e:
            notes.append(f"dataset {name}: {type(e).__name__} here, so planned from the "
                         "registry's shapes (the run needs the data)")

    def train_class_counts(name, data_dir=None):
        try:
            return counts(name, data_dir)
        except UserError:
            classes = jdata.get_info(name).num_classes
            notes.append(f"class sizes of {name} unknown without its data: loss.batch_real and "
                         "ipc not checked against them")
            return (2**31 - 1,) * classes

    def open_experts(buffer_dir, *args, **kwargs):
        try:
            return experts(buffer_dir, *args, **kwargs)
        except UserError as e:
            notes.append(f"no usable expert store ({_first_line(e)}): the TM student is the "
                         "spec's `model` section")
            return None

    swaps = ((jdata, "check_available", check_available),
             (jdata, "train_class_counts", train_class_counts),
             (distill_spec, "open_experts", open_experts))
    saved = [(module, name, getattr(module, name)) for module, name, _ in swaps]
    try:
        for module, name, fn in swaps:
            setattr(module, name, fn)
        return resolve(config), list(dict.fromkeys(notes))
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:160] if text else type(e).__name__


# ------------------------------------------------------------------------------- programs
class Program(NamedTuple):
    """One step function of a command and its inputs, abstract.

    Attributes:
      name: what the step is ("distill step (DM)", "expert step", ...).
      fn: the jitted function the run calls (`jax.jit(...)`, donation as in the run).
      args: its positional arguments as pytrees of `jax.ShapeDtypeStruct` (with shardings).
      per_iteration: calls of `fn` per iteration of the command's loop.
      resident: bytes per device that stay allocated during the step but are not among its
        arguments (e.g. a test split held on the device).
    """

    name: str
    fn: Callable
    args: tuple
    per_iteration: float = 1.0
    resident: int = 0


class StepCost(NamedTuple):
    """One compiled program's figures, per device (bytes, FLOPs)."""

    name: str
    argument: int
    output: int
    alias: int
    temp: int
    code: int
    resident: int
    flops: float           # jaxpr_flops per device per call (loops x trip counts)
    xla_flops: float       # compiled.cost_analysis()["flops"] (loop bodies once)
    per_iteration: float
    open_loops: int        # while loops of unknown trip count, counted once

    @property
    def peak(self) -> int:
        return (self.argument + self.output - self.alias + self.temp + self.code
                + self.resident)


class Budget(NamedTuple):
    bytes: float | None    # None: unknown (no check)
    source: str


def per_device_bytes(tree: Any) -> int:
    """Bytes one device holds of a pytree of arrays or `ShapeDtypeStruct`s (by their shardings;
    no sharding: whole on every device)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = tuple(leaf.shape)
        s = getattr(leaf, "sharding", None)
        if s is not None:
            shape = s.shard_shape(shape)
        dtype = leaf.dtype
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            itemsize = 8       # threefry key data: 2 x uint32
        else:
            itemsize = np.dtype(dtype).itemsize
        total += int(np.prod(shape, dtype=np.int64)) * itemsize
    return total


# Primitives whose sub-jaxprs run a known number of times; others' run once (cond: the most
# expensive branch).
def _sub_jaxprs(value):
    if hasattr(value, "eqns"):
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        yield value.jaxpr
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def _dot_flops(eqn) -> float:
    (contract, _), _ = eqn.params["dimension_numbers"]   # ((lhs, rhs) contracting, batch)
    lhs = eqn.invars[0].aval.shape
    k = float(np.prod([lhs[d] for d in contract], dtype=np.float64))
    return 2.0 * float(np.prod(eqn.outvars[0].aval.shape, dtype=np.float64)) * k


def _conv_flops(eqn) -> float:
    """2 x output elements x input features x the kernel taps that meet an input element (not
    padding, not a hole of lhs dilation): the transposed convolutions of second derivatives pad
    a 3x3 input by 62 to slide a 64x64 "kernel", where counting every tap would be 455x high.
    XLA's cost analysis counts the same way."""
    p = eqn.params
    lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
    out = eqn.outvars[0].aval.shape
    dn = p["dimension_numbers"]
    taps = 1.0
    for d in range(len(dn.lhs_spec) - 2):
        size, k = lhs[dn.lhs_spec[2 + d]], rhs[dn.rhs_spec[2 + d]]
        o = out[dn.out_spec[2 + d]]
        dl, dr = p["lhs_dilation"][d], p["rhs_dilation"][d]
        i = (np.arange(o)[:, None] * p["window_strides"][d] + np.arange(k)[None, :] * dr
             - p["padding"][d][0])
        taps *= float(np.sum((i >= 0) & (i <= (size - 1) * dl) & (i % dl == 0)))
    per_tap = out[dn.out_spec[0]] * out[dn.out_spec[1]] * rhs[dn.rhs_spec[1]]
    return 2.0 * per_tap * taps


def jaxpr_flops(jaxpr) -> tuple[float, int]:
    """`(FLOPs, open loops)`: the matmul (`dot_general`) and convolution FLOPs of a (closed)
    jaxpr, each `scan` body times its length, a `cond` by its most expensive branch, a `while`
    body once (counted in `open loops`: its trip count is not static). Global FLOPs: the work
    of every device together."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total, open_loops = 0.0, 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
            continue
        if name == "conv_general_dilated":
            total += _conv_flops(eqn)
            continue
        subs = [jaxpr_flops(j) for v in eqn.params.values() for j in _sub_jaxprs(v)]
        if not subs:
            continue
        if name == "cond":
            total += max(f for f, _ in subs)
            open_loops += max(o for _, o in subs)
            continue
        times = eqn.params.get("length", 1) if name == "scan" else 1
        open_loops += (name == "while") + sum(o for _, o in subs)
        total += times * sum(f for f, _ in subs)
    return total, open_loops


def compile_program(p: Program):
    """`(compiled, jaxpr)`: `p.fn` traced, lowered and compiled for `p.args` (nothing runs). A
    plain function (a wrapped step) is jitted here: measured, but its compile is not reused."""
    fn = p.fn if hasattr(p.fn, "trace") else jax.jit(p.fn)
    traced = fn.trace(*p.args)
    return traced.lower().compile(), traced.jaxpr


def measure_program(p: Program, num_devices: int) -> StepCost:
    """Compile `p` and read XLA's memory and cost analyses (per device)."""
    compiled, jaxpr = compile_program(p)
    m = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, (list, tuple)):       # older jax: one dict per computation
        cost = cost[0] if cost else {}
    flops, open_loops = jaxpr_flops(jaxpr)
    return StepCost(p.name, int(m.argument_size_in_bytes), int(m.output_size_in_bytes),
                    int(m.alias_size_in_bytes), int(m.temp_size_in_bytes),
                    int(m.generated_code_size_in_bytes), int(p.resident),
                    flops / max(num_devices, 1), float(cost.get("flops", 0.0)),
                    p.per_iteration, open_loops)


# ------------------------------------------------------------------------------- budget
def current_accelerator() -> str:
    """The `ACCELERATORS` key of this machine's devices, or "" (CPU, or a chip not listed)."""
    kind = jax.devices()[0].device_kind.lower()
    for name, a in ACCELERATORS.items():
        if any(k in kind for k in a.kinds):
            return name
    return ""


def physical_memory() -> float:
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def device_budget(options: PlanOptions, *, for_run: bool) -> Budget:
    """The memory one device may use (see the module docstring for the order of sources)."""
    env = os.environ.get(MEMORY_ENV, "").strip()
    if env:
        return Budget(parse_size(env, MEMORY_ENV), f"{MEMORY_ENV}={env}")
    if options.device_memory:
        return Budget(options.device_memory, "config key plan.device_memory")
    if options.accelerator and not for_run and options.accelerator != current_accelerator():
        a = ACCELERATORS[options.accelerator]
        return Budget(a.memory, f"{a.label} ({_gib(a.memory)} per chip; the programs were "
                                f"compiled for this machine's {jax.devices()[0].platform})")
    device = jax.local_devices()[0]
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:          # noqa: BLE001 - some backends do not implement it
        stats = None
    if stats and stats.get("bytes_limit"):
        return Budget(float(stats["bytes_limit"]),
                      f"{device.device_kind}: memory_stats bytes_limit")
    if device.platform == "cpu":
        ram = physical_memory()
        procs, local = jax.process_count(), jax.local_device_count()
        return Budget(ram / (procs * local),
                      f"CPU: physical RAM {_gib(ram)} / ({procs} process{'es' * (procs > 1)} "
                      f"x {local} device{'s' * (local > 1)}); no device memory on CPU")
    return Budget(None, f"{device.device_kind}: memory unknown (set {MEMORY_ENV})")


# ------------------------------------------------------------------------------- the plan
class Plan(NamedTuple):
    """A command's fit check: sections and steps per device, the budget, the time estimate."""

    command: str
    devices: str                          # e.g. "8 x cpu (cpu), mesh data=8"
    sections: tuple[tuple[str, int], ...] # (what, bytes per device): parts of the steps' inputs
    steps: tuple[StepCost, ...]
    budget: Budget
    options: PlanOptions
    knobs: tuple[str, ...]                # what to turn when it does not fit
    notes: tuple[str, ...] = ()

    @property
    def peak(self) -> int:
        return max((s.peak for s in self.steps), default=0)

    @property
    def fits(self) -> bool:
        return self.budget.bytes is None or self.peak <= self.budget.bytes

    @property
    def flops_per_iteration(self) -> float:
        return sum(s.flops * s.per_iteration for s in self.steps)

    def seconds_per_iteration(self) -> tuple[float | None, str]:
        """(seconds, how): FLOPs per device / (fraction x peak), or None with the reason."""
        name = self.options.accelerator or current_accelerator()
        if not name:
            return None, ("no accelerator named (--config.plan.accelerator=" +
                          "|".join(ACCELERATORS) + ")")
        a = ACCELERATORS[name]
        peak = getattr(a, self.options.precision)
        if peak is None:
            return None, f"{a.label} has no {self.options.precision} peak; use fp32 or bf16"
        f = self.options.fraction
        return (self.flops_per_iteration / (f * peak),
                f"{a.label} at {f:.0%} of {peak / T:.4g} TFLOP/s {self.options.precision}")

    def format(self) -> str:
        lines = [f"[jaxdiff {self.command}] fit check per device ({self.devices}):"]
        for what, size in self.sections:
            lines.append(f"  {what:<40} {_human(size):>11}")
        for s in self.steps:
            lines.append(f"  step {s.name!r}:")
            lines.append(f"    arguments {_human(s.argument)}, outputs {_human(s.output)} "
                         f"({_human(s.alias)} aliasing donated arguments), XLA temporaries "
                         f"{_human(s.temp)}, generated code {_human(s.code)}"
                         + (f", resident outside the step {_human(s.resident)}"
                            if s.resident else ""))
            lines.append(f"    peak {_human(s.peak)}; {_flops(s.flops)} per call per device "
                         f"(matmuls + convolutions, loops x trip counts; XLA's cost analysis: "
                         f"{_flops(s.xla_flops)}, loop bodies once)"
                         + (f"; {s.open_loops} while loop(s) of unknown length counted once"
                            if s.open_loops else ""))
        budget = ("unknown: not checked" if self.budget.bytes is None
                  else f"{_human(self.budget.bytes)}")
        lines.append(f"  total (largest step peak) {_human(self.peak)} of {budget} "
                     f"[{self.budget.source}]"
                     + ("" if self.budget.bytes is None else
                        f": {100 * self.peak / self.budget.bytes:.0f} %"
                        + ("" if self.fits else "  DOES NOT FIT")))
        lines.append(f"  FLOPs per iteration per device: {_flops(self.flops_per_iteration)}")
        seconds, how = self.seconds_per_iteration()
        lines.append(f"  time per iteration: {'n/a' if seconds is None else _seconds(seconds)}"
                     f" ({how}; an estimate from FLOPs alone)")
        lines += [f"  note: {n}" for n in self.notes]
        if not self.fits:
            lines.append("  to fit: " + "; ".join(self.knobs))
        return "\n".join(lines)

    def summary(self) -> str:
        """One line for a run's log: the peak against the budget, FLOPs and time."""
        budget = ("an unknown budget" if self.budget.bytes is None
                  else f"{_human(self.budget.bytes)} [{self.budget.source}]")
        seconds, how = self.seconds_per_iteration()
        time = "" if seconds is None else f", >= {_seconds(seconds)} per iteration on {how}"
        return (f"fit check: {_human(self.peak)} per device of {budget}; "
                f"{_flops(self.flops_per_iteration)} per iteration per device{time}")

    def check(self) -> None:
        """Raise `PlanError` (a `UserError`: exit 2) naming the figures and the knobs when the
        estimate exceeds the budget."""
        if distributed.agree(self.fits):      # process 0's verdict: all stop or all go on
            return
        worst = max(self.steps, key=lambda s: s.peak)
        raise PlanError(
            f"the run does not fit: step {worst.name!r} needs {_human(worst.peak)} per device "
            f"(arguments {_human(worst.argument)}, XLA temporaries {_human(worst.temp)}), "
            f"{self.budget.source} allows {_human(self.budget.bytes)}. Nothing was run or "
            f"written. To fit: {'; '.join(self.knobs)}. `jaxdiff plan` (or --plan) prints the "
            "whole estimate")


class PlanError(UserError):
    """A run whose estimated memory per device exceeds the budget (stopped before any work)."""


def make_plan(command: str, programs: Sequence[Program], sections, options: PlanOptions, *,
              knobs: Sequence[str], notes: Sequence[str] = (), for_run: bool,
              num_devices: int, devices: str) -> Plan:
    """Compile every program (nothing runs) and gather the plan."""
    steps = tuple(measure_program(p, num_devices) for p in programs)
    budget = device_budget(options, for_run=for_run)
    return Plan(command, devices, tuple((w, int(b)) for w, b in sections), steps, budget,
                options, tuple(knobs), tuple(notes))


def largest_fitting(candidates: Sequence[int], fits: Callable[[int], bool]) -> int | None:
    """The largest of the ascending `candidates` for which `fits` holds, by binary search (the
    memory of a step grows with the candidate); None when none fits. `fits` is called on at
    most ceil(log2(len + 1)) candidates, the largest one first."""
    lo, hi = 0, len(candidates) - 1
    if fits(candidates[hi]):
        return candidates[hi]
    hi -= 1
    best = None
    while lo <= hi:
        mid = (lo + hi + 1) // 2
        if fits(candidates[mid]):
            best, lo = candidates[mid], mid + 1
        else:
            hi = mid - 1
    return best


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# ------------------------------------------------------------------------------- formatting
def _gib(b: float) -> str:
    return f"{b / 2**30:.1f} GiB"


def _human(b: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(b) >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{int(b)} B"


def _flops(f: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if f >= scale:
            return f"{f / scale:.3g} {unit}"
    return f"{f:.3g} FLOP"


def _seconds(s: float) -> str:
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"
