"""`jaxdiff <command>`: the single entry point. Parses configs, resolves them, calls pipelines.

Every command that runs a job takes `--config NAME_OR_PATH` (a preset in `configs/` or a
Python file with `get_config()`) and overrides `--config.a.b=value`. Its path through the code
is the same for all of them and reads top to bottom in two files:

    config = build_config(...)                       # jaxdiff/config_utils.py
    spec = jaxdiff.specs.<command>.resolve(config)   # every default filled, every value checked
    jaxdiff.pipelines.<command>.run(spec)            # data -> steps -> loop -> outputs

`COMMANDS` is the dispatch table; each entry's loader imports its two modules (lazily, so
`jaxdiff --help` does not import jax).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NamedTuple


class Command(NamedTuple):
    """A `jaxdiff` command: its default preset, its `(resolve, run)` loader and its help."""

    preset: str
    load: Callable[[], tuple[Callable | None, Callable]]
    help: str


def _distill():
    from jaxdiff.pipelines import distill
    from jaxdiff.specs import distill as spec
    return spec.resolve, distill.run


def _evaluate():
    from jaxdiff.pipelines import evaluate
    from jaxdiff.specs import evaluate as spec
    return spec.resolve, evaluate.run


def _experts():
    from jaxdiff.pipelines import experts
    from jaxdiff.specs import experts as spec
    return spec.resolve, experts.run


def _select():
    from jaxdiff.pipelines import select
    from jaxdiff.specs import select as spec
    return spec.resolve, select.run


def _train_denoiser():
    from jaxdiff.pipelines import train_denoiser
    from jaxdiff.specs import train_denoiser as spec
    return spec.resolve, train_denoiser.run


def _sample():
    from jaxdiff.pipelines import sample
    from jaxdiff.specs import sample as spec
    return spec.resolve, sample.run


def _train_discriminator():
    from jaxdiff.pipelines import train_discriminator
    from jaxdiff.specs import train_discriminator as spec
    return spec.resolve, train_discriminator.run


COMMANDS = {
    "evaluate": Command("evaluate_digits", _evaluate,
                        "train fresh networks on a real subset / full data / a saved synthetic "
                        "set and test on the real test split"),
    "experts": Command("experts_digits", _experts, "train expert trajectories (parameter "
                       "snapshots per epoch) for trajectory matching"),
    "distill": Command("quickstart", _distill,
                       "distil a dataset (pixel / FreD / DDiF with DM, DC or TM) and evaluate it"),
    "train-denoiser": Command("train_denoiser_digits", _train_denoiser, "train an EDM denoiser "
                              "(U-Net/MLP) with EMA; writes sample grids and a model"),
    "sample": Command("sample_digits", _sample, "sample a trained denoiser (or an analytic GMM) "
                      "with a chosen solver and guidance; NFE, quality"),
    "select": Command("select_digits", _select, "select class-balanced subsets (LCMat-S and "
                      "baselines) and evaluate them"),
    "train-discriminator": Command("train_discriminator_digits", _train_discriminator,
                                   "train the DiffRS/DG time-dependent discriminator for a "
                                   "trained denoiser"),
}
SHOW_HELP = "write PNG grids of the image sets in a run directory"
PLAN_HELP = ("fit check: compile a command's step functions for the current mesh without running "
             "them or reading data; print memory per device (parameters, optimiser state, "
             "synthetic set, real batch, XLA temporaries), the total against the device's memory, "
             "FLOPs and time per iteration. Options: --config.plan.accelerator=h200|h100|a100|v4|"
             "v5e|v5p|v6e, .fraction=0.3, .precision=fp32|tf32|bf16, .device_memory=16GiB")
PLAN_FLAG_HELP = "print the fit check (`jaxdiff plan`) instead of running, and exit"


def _distill_plan():
    from jaxdiff.pipelines import distill
    return distill.plan


def _experts_plan():
    from jaxdiff.pipelines import experts
    return experts.plan


# Commands with a fit check: `plan(spec, options, for_run=False)` -> (.plan, .spec); their
# `run(spec, plan_options)` checks the fit before any work.
PLANNERS = {"distill": _distill_plan, "experts": _experts_plan}
IMPORT_HELP = ("convert an official NVlabs/edm network pickle (read without PyTorch, no code "
               "from the file runs) into a directory of Flax parameters (Orbax) + edm.json; "
               "with --dg-head: DG's ADM classifier FILE + its discriminator head into a DG "
               "discriminator (Orbax + dg.json) for sample's guidance dg / diffrs")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jaxdiff",
        description="jaxdiff: diffusion test-time sampling and dataset reduction in JAX.",
        epilog="Config overrides: --config.section.key=value (unknown keys are rejected and "
               "the valid keys listed). Presets live in configs/.")
    cluster = argparse.ArgumentParser(add_help=False)
    g = cluster.add_argument_group(
        "several processes (multi-host; see README \"Run on a cluster\")",
        "Every process runs the same command with the same config. Without these (or "
        "JAXDIFF_COORDINATOR / JAXDIFF_NUM_PROCESSES / JAXDIFF_PROCESS_ID), a SLURM, Open MPI, "
        "Cloud TPU or Kubernetes launch is detected; otherwise the run is one process.")
    g.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                   help="address of process 0's coordinator (a loopback address binds to "
                        "loopback only)")
    g.add_argument("--num-processes", metavar="N", type=int, default=None)
    g.add_argument("--process-id", metavar="I", type=int, default=None)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (default, _, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_, parents=[cluster])
        sp.add_argument("--config", default=default,
                        help=f"preset name in configs/ or path to a config file (default: {default})")
        sp.add_argument("--resume", action="store_true", help="resume from the run's last checkpoint")
        sp.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
        sp.add_argument("--plan", action="store_true", help=PLAN_FLAG_HELP)
    sp = sub.add_parser("plan", help=PLAN_HELP, description=PLAN_HELP, parents=[cluster])
    sp.add_argument("--config", required=True, help="preset name in configs/ or path to a config "
                    "file (its command is read from the name: distill_*, experts_*, quickstart; "
                    "or give --command)")
    sp.add_argument("--command", dest="command_name", choices=sorted(PLANNERS), default=None,
                    help="the command whose steps to plan (default: from the preset's name)")
    sp = sub.add_parser("show", help=SHOW_HELP, description=SHOW_HELP)
    sp.add_argument("run_dir", help="a run directory (or a .npz file of images)")
    sp.add_argument("--out", default=None, help="PNG path (default RUN_DIR/show.png)")
    sp.add_argument("--max-images", type=int, default=400)
    sp = sub.add_parser("import-checkpoint", help=IMPORT_HELP, description=IMPORT_HELP)
    sp.add_argument("file", help="an EDM network pickle (edm-*.pkl, network-snapshot-*.pkl), "
                    "or with --dg-head DG's ADM classifier (32x32_classifier.pt)")
    sp.add_argument("--out", required=True, help="a new (or empty) directory")
    sp.add_argument("--dg-head", default=None, metavar="PT",
                    help="DG's discriminator head (discriminator_60.pt, discriminator_250.pt)")
    sp.add_argument("--image-size", type=int, default=32,
                    help="the DG classifier's resolution (32 or 64; with --dg-head)")
    from jaxdiff.fid.commands import add_arguments as add_fid_arguments  # imports no jax
    add_fid_arguments(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from jaxdiff.config_utils import build_config, parse_overrides

    if argv is None:  # a real process entry (not a call from Python): see jaxdiff.runtime
        from jaxdiff.runtime import reexec_with_reuse_heap, start_heap_trimmer
        reexec_with_reuse_heap([sys.executable, "-m", "jaxdiff.cli", *sys.argv[1:]])
        try:
            start_heap_trimmer()
        except ValueError as e:
            sys.exit(f"jaxdiff: {e}")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        config_name, overrides, rest = parse_overrides(argv)
    except ValueError as e:
        parser.exit(2, f"jaxdiff: {e}\n")
    args = parser.parse_args(rest + (["--config", config_name] if config_name else []))
    if args.command is None:
        parser.print_help()
        return 0
    from jaxdiff.errors import UserError

    if args.command in ("show", "import-checkpoint"):   # commands without a config
        try:
            if args.command == "show":
                from jaxdiff.pipelines.show import show
                print(show(args.run_dir, out=args.out, max_images=args.max_images))
            elif args.dg_head:
                from jaxdiff.models.dg import import_discriminator
                out = import_discriminator(args.file, args.dg_head, args.out,
                                           image_size=args.image_size)
                print(f"[jaxdiff import-checkpoint] wrote {out} (a DG discriminator: "
                      "--config.guidance.disc_dir for guidance dg or diffrs)")
            else:
                from jaxdiff.models.edm import import_checkpoint
                print(f"[jaxdiff import-checkpoint] wrote {import_checkpoint(args.file, args.out)}"
                      " (load it with jaxdiff.models.edm.load)")
        except UserError as e:
            _user_error(args.command, e)
        return 0
    if args.command in ("fid-ref", "fid"):                  # FID: no config either
        try:
            from jaxdiff.fid.commands import run as run_fid
            print(run_fid(args))
        except UserError as e:
            _user_error(args.command, e)
        return 0
    if args.command == "plan":
        try:
            args.command, args.plan = _planned_command(args.config, args.command_name), True
        except ValueError as e:
            parser.exit(2, f"jaxdiff plan: {e}\n")
        args.print_config = args.resume = False
    overrides, args.plan_overrides = _split_plan_overrides(overrides)
    try:
        config = build_config(args.config, overrides)
    except (KeyError, TypeError, FileNotFoundError, ValueError) as e:
        parser.exit(2, f"jaxdiff {args.command}: {e.args[0] if e.args else e}\n")
    if "resume" in config:
        config.resume = bool(args.resume or config.resume)

    try:
        return _run_command(args, config)
    except UserError as e:       # a value, file or run the user can fix: no traceback
        _user_error(args.command, e)
    except Exception:
        if not _several_processes():
            raise                # an internal error keeps its traceback
        import traceback

        import jax
        traceback.print_exc()
        _exit(1, f"jaxdiff {args.command}: process {jax.process_index()} of "
                 f"{jax.process_count()} stopped on the error above (when another process died, "
                 "this one fails in the next collective). Checkpoints up to the last save are "
                 "kept: start all processes again with --resume.\n")


def _user_error(command: str, e: Exception) -> None:
    """Exit 2 with the message alone; `JAXDIFF_DEBUG=1` prints the traceback first."""
    import os
    if os.environ.get("JAXDIFF_DEBUG", "").strip().lower() in ("1", "true", "yes", "on"):
        import traceback
        traceback.print_exception(e)
    _exit(2, f"jaxdiff {command}: {e}\n")


def _several_processes() -> bool:
    jax = sys.modules.get("jax")
    return jax is not None and jax.distributed.is_initialized() and jax.process_count() > 1


def _exit(code: int, message: str) -> None:
    """Print `message` and exit. In a multi-process run exit at once: the normal exit would wait
    at jax's shutdown barrier for processes that may be stuck in a collective; the distributed
    runtime then stops the others (within JAXDIFF_HEARTBEAT_TIMEOUT seconds)."""
    import os
    sys.stderr.write(message)
    sys.stdout.flush()
    sys.stderr.flush()
    if _several_processes():
        os._exit(code)
    raise SystemExit(code)


def _run_command(args, config) -> int:
    """Start the processes (if several), resolve, check that all processes agree, run."""
    from jaxdiff import distributed

    launch = distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    if launch.source != "single":
        from jaxdiff.sharding import data_mesh
        print(f"[jaxdiff] {distributed.describe(data_mesh())} (started from {launch.source})",
              flush=True)
    resolve, run = COMMANDS[args.command].load()
    from jaxdiff.specs.base import print_resolved

    options = _plan_options(args)
    if args.plan:
        return _plan(args.command, resolve, config, options)
    spec = resolve(config)
    distributed.check_same("resolved config", {"command": args.command,
                                               "config": spec.resolution.config})
    if args.print_config:
        print_resolved(spec.resolution)
        import json
        print(json.dumps(spec.resolution.config, indent=2, default=str))
        return 0
    if args.command in PLANNERS:
        run(spec, plan_options=options)
    else:
        run(spec)
    return 0


def _split_plan_overrides(overrides):
    """`--config.plan.KEY=V` are the fit check's options, not config keys (a config may still
    define a `plan` section of its own: then they are its keys)."""
    plan = [(k[len("plan."):], v) for k, v in overrides if k.startswith("plan.")]
    return [(k, v) for k, v in overrides if not k.startswith("plan.")], plan


def _plan_options(args):
    """The fit check's options from `--config.plan.*` (UserError on a bad key or value, or on a
    command that has no fit check)."""
    from jaxdiff.errors import UserError
    from jaxdiff.pipelines.plan import options_from

    if args.plan_overrides and args.command not in PLANNERS:
        raise UserError(f"--config.plan.* options: `jaxdiff {args.command}` has no fit check "
                        f"yet (commands with one: {', '.join(sorted(PLANNERS))})")
    return options_from(args.plan_overrides)


def _planned_command(config: str, given: str | None) -> str:
    """The command `jaxdiff plan --config NAME` plans: `given`, else read from the preset's
    name (`distill_*`, `experts_*`, ...; `quickstart` is distill)."""
    if given:
        return given
    import os
    stem = os.path.splitext(os.path.basename(config.split(":")[0]))[0]   # NAME[:ARGUMENT]
    if stem == "quickstart":
        return "distill"
    for name in sorted(PLANNERS, key=len, reverse=True):
        prefix = name.replace("-", "_")
        if stem == prefix or stem.startswith(prefix + "_"):
            return name
    raise ValueError(f"cannot tell which command config {config!r} is for; name it: "
                     f"--command {'|'.join(sorted(PLANNERS))}")


def _plan(command: str, resolve, config, options) -> int:
    """`--plan` / `jaxdiff plan`: resolve (where the data or a TM expert store is absent, from
    the registry's shapes), compile the steps without running them, print; exit 0 (also when it
    does not fit: the output says so and what to turn)."""
    from jaxdiff import distributed
    from jaxdiff.errors import UserError
    from jaxdiff.pipelines.plan import resolve_for_plan
    from jaxdiff.specs.base import print_resolved

    if command not in PLANNERS:
        raise UserError(f"--plan: `jaxdiff {command}` has no fit check yet (commands with one: "
                        f"{', '.join(sorted(PLANNERS))})")
    spec, notes = resolve_for_plan(resolve, config)
    distributed.check_same("resolved config", {"command": command,
                                               "config": spec.resolution.config})
    planned = PLANNERS[command]()(spec, options)
    if distributed.is_main():
        print_resolved(planned.spec.resolution)
        print(planned.plan.format())
        for note in notes:
            print(f"  note: {note}")
        print(f"[jaxdiff {command}] plan only: nothing was run or written", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
