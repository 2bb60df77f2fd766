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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jaxdiff",
        description="jaxdiff: diffusion test-time sampling and dataset reduction in JAX.",
        epilog="Config overrides: --config.section.key=value (unknown keys are rejected and "
               "the valid keys listed). Presets live in configs/.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (default, _, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--config", default=default,
                        help=f"preset name in configs/ or path to a config file (default: {default})")
        sp.add_argument("--resume", action="store_true", help="resume from the run's last checkpoint")
        sp.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    sp = sub.add_parser("show", help=SHOW_HELP, description=SHOW_HELP)
    sp.add_argument("run_dir", help="a run directory (or a .npz file of images)")
    sp.add_argument("--out", default=None, help="PNG path (default RUN_DIR/show.png)")
    sp.add_argument("--max-images", type=int, default=400)
    return p


def main(argv: list[str] | None = None) -> int:
    from jaxdiff.config_utils import build_config, parse_overrides

    if argv is None:  # a real process entry (not a call from Python): see jaxdiff.runtime
        from jaxdiff.runtime import reexec_with_reuse_heap
        reexec_with_reuse_heap([sys.executable, "-m", "jaxdiff.cli", *sys.argv[1:]])
    argv = list(sys.argv[1:] if argv is None else argv)
    config_name, overrides, rest = parse_overrides(argv)
    parser = _parser()
    args = parser.parse_args(rest + (["--config", config_name] if config_name else []))
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "show":
        from jaxdiff.pipelines.show import show
        print(show(args.run_dir, out=args.out, max_images=args.max_images))
        return 0
    try:
        config = build_config(args.config, overrides)
    except (KeyError, TypeError, FileNotFoundError, ValueError) as e:
        parser.exit(2, f"jaxdiff {args.command}: {e.args[0] if e.args else e}\n")
    if "resume" in config:
        config.resume = bool(args.resume or config.resume)
    resolve, run = COMMANDS[args.command].load()
    if resolve is None:      # a command not yet on specs: its pipeline reads the config
        if args.print_config:
            print(config)
            return 0
        run(config)
        return 0
    from jaxdiff.specs.base import SpecError, print_resolved

    try:
        spec = resolve(config)
    except SpecError as e:
        parser.exit(2, f"jaxdiff {args.command}: {e}\n")
    if args.print_config:
        print_resolved(spec.resolution)
        import json
        print(json.dumps(spec.resolution.config, indent=2, default=str))
        return 0
    try:
        run(spec)
    except SpecError as e:      # a value the data or an input file refuses (named by the key)
        parser.exit(2, f"jaxdiff {args.command}: {e}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
