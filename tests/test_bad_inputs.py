"""Bad inputs across every command, through the CLI entry point (`jaxdiff.cli.main`): each one
exits with code 2 and one message naming the key or path and the fix, without a traceback, and
leaves the existing run directories byte-for-byte unchanged (hashed before and
after). Every case fails before any training, so the suite stays fast.

Two cases run the real `python -m jaxdiff.cli` process: no traceback by default, the traceback
with JAXDIFF_DEBUG=1.
"""

import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from jaxdiff import cli
from jaxdiff.config_utils import build_config
from jaxdiff.distill.synset import LabelledSet, save_synset
from jaxdiff.pipelines import common
from jaxdiff.pipelines import train_denoiser
from jaxdiff.specs import distill as distill_spec
from jaxdiff.specs import evaluate as evaluate_spec
from jaxdiff.specs import experts as experts_spec
from jaxdiff.specs import sample as sample_spec
from jaxdiff.specs import select as select_spec
from jaxdiff.specs import train_denoiser as train_denoiser_spec

from tests.helpers import tiny_train_denoiser_config

TM = ["--config.loss.name=tm", "--config.loss.tm.syn_steps=2",
      "--config.loss.tm.max_start_epoch=1", "--config.loss.tm.lr_lr=1e-5"]
GMM = ["--config.source=gmm"]

# (command, arguments, words of the message). `{...}` in an argument names a prepared path
# (see `world`); every command's run directory is an existing run of that command.
CASES = [
    # distill: values
    ("distill", ["--config.ipc=0"], "config key 'ipc' = 0 must be >= 1"),
    ("distill", ["--config.ipc=-3"], "config key 'ipc' = -3 must be >= 1"),
    ("distill", ["--config.ipc=abc"], "config key 'ipc' expects int, got 'abc'"),
    ("distill", ["--config.ipc=1000", "--config.param.name=pixel"],
     "'ipc' = 1000: param.name=pixel initialises its 1000 instances per class from distinct real "
     "images, but the smallest class of digits train has 139; lower ipc or "
     "--config.param.pixel.init=noise"),
    ("distill", ["--config.ipc=200", "--config.param.name=fred"],
     "param.name=fred initialises its 800 instances per class .* has 139; lower ipc"),
    ("distill", ["--config.data.name=nope"], "'data.name' = 'nope' is not one of \\['cifar10'"),
    ("distill", ["--config.loss.name=nope"], "'loss.name' = 'nope' is not one of \\['dc', 'dm'"),
    ("distill", ["--config.param.name=nope"], "'param.name' = 'nope' is not one of"),
    ("distill", ["--config.opt.name=nope"], "'opt.name' = 'nope' is not one of \\['adam', 'sgd'\\]"),
    ("distill", ["--config.nokey=1"], "unknown config key 'nokey'. Valid keys: checkpoint_every"),
    ("distill", ["--config.data.image_size=-4"], "'data.image_size' = -4 must be >= 0"),
    ("distill", ["--config.data.image_size=12", "--config.param.name=fred"],
     "'model.depth' = 0 \\(by image size\\): no standard ConvNet depth for image size 12.* set "
     "--config.model.depth explicitly"),
    ("distill", ["--config.model.name=nope"], "'model.name' = 'nope' is not one of"),
    ("distill", ["--config.model.norm=nope"], "'model.norm' = 'nope' is not one of"),
    ("distill", ["--config.param.ddif.width=400"],
     "'param.ddif' with ipc=1: budget too small: .* needs 162001 floats per instance"),
    ("distill", ["--config.param.ddif.depth=-1"], "depth must be a positive integer, got -1"),
    ("distill", ["--config.param.name=fred", "--config.param.fred.k=100000"],
     "the mask cannot select k=100000 coefficients"),
    ("distill", ["--config.loss.batch_real=0"], "'loss.batch_real' = 0 must be >= 1"),
    ("distill", ["--config.opt.lr=-1"], "'opt.lr' = -1 must be >= 0"),
    ("distill", ["--config.opt.momentum=2"], "'opt.momentum' = 2 must be < 1"),
    ("distill", ["--config.opt.group_lr=garbage"], "'opt.group_lr': entry 'garbage' is not NAME=LR"),
    ("distill", ["--config.eval.dsa_strategy=bogus"], "'eval.dsa_strategy': unknown DSA token"),
    ("distill", ["--config.seed=1.5"], "'seed' expects int, got '1.5'"),
    ("distill", ["--config.progress=maybe"], "'progress' expects a boolean \\(true/false"),
    ("distill", ["--config.divergence_limit=-1"], "'divergence_limit' = -1 must be >= 0"),
    ("distill", ["--config.log_every=0"], "'log_every' = 0 must be >= 1"),
    ("distill", ["--config.iterations"], "override --config.iterations has no value: write "
                                          "--config.iterations=VALUE"),
    # distill: inputs
    ("distill", [*TM, "--config.loss.tm.buffer_dir={missing}"], "no expert store at .*missing"),
    ("distill", [*TM, "--config.loss.tm.buffer_dir={afile}"], "no expert store at .*afile"),
    ("distill", [*TM, "--config.loss.tm.buffer_dir={experts}", "--config.loss.tm.max_start_epoch=9"],
     "loss.tm.max_start_epoch \\(9\\) \\+ loss.tm.expert_epochs \\(2\\) exceeds the 3 epochs"),
    ("distill", ["--config.data.name=cifar10_jpeg", "--config.data.data_dir={missing}"],
     "dataset 'cifar10_jpeg' was not found. Searched"),
    # distill: the run directory
    ("distill", ["--config.run_dir={afile}"], "key .run_dir. = .*afile. is a file; choose a directory"),
    ("distill", ["--resume", "--config.run_dir={missing}"],
     "--resume: .*missing holds no distill run to continue .*run without --resume"),
    ("distill", [], "already holds a distill run; pass --resume to continue it"),
    ("distill", ["--config.run_dir={run:train-denoiser}"],
     "holds a `jaxdiff train-denoiser` run, not a distill run"),
    ("distill", ["--resume", "--config.ipc=2"], "was run with another config \\(ipc: 1 -> 2\\)"),
    # evaluate
    ("evaluate", ["--config.source=bogus"], "'source' = 'bogus' is not one of"),
    ("evaluate", ["--config.source=synthetic"], "source=synthetic needs --config.synthetic_path"),
    ("evaluate", ["--config.source=synthetic", "--config.synthetic_path={missing}"],
     "'synthetic_path' = .*missing': no synthetic.npz there"),
    ("evaluate", ["--config.source=synthetic", "--config.synthetic_path={notimages}"],
     "notimages.npz is not an image set .* it lacks \\['dataset', 'images'"),
    ("evaluate", ["--config.source=synthetic", "--config.synthetic_path={afile}"],
     "afile is not a readable .npz image set"),
    ("evaluate", ["--config.source=synthetic", "--config.synthetic_path={set8}"],
     "has images of shape \\(8, 8, 1\\), the dataset's at data.image_size=16 are \\(16, 16, 1\\)"),
    ("evaluate", ["--config.source=synthetic", "--config.synthetic_path={mnistset}"],
     "was made from 'mnist', but data.name is 'digits'; set --config.data.name=mnist"),
    ("evaluate", ["--config.data.name=mnist"], "dataset 'mnist' was not found. Searched"),
    ("evaluate", ["--config.ipc=0"], "'ipc' = 0 must be >= 1"),
    ("evaluate", ["--config.ipc=500"], "'ipc' = 500 exceeds the smallest class of digits"),
    ("evaluate", ["--config.train.num_runs=0"], "'train.num_runs' = 0 must be >= 1"),
    ("evaluate", ["--config.train.batch_size=0"], "'train.batch_size' = 0 must be >= 1"),
    ("evaluate", ["--config.train.eval_epochs=(500,)"], "\\[500\\] outside 1..301"),
    ("evaluate", ["--config.model.norm=bogus"], "'model.norm' = 'bogus' is not one of"),
    ("evaluate", ["--config.run_dir={run:distill}"], "holds a `jaxdiff distill` run"),
    # experts
    ("experts", ["--config.num_experts=0"], "'num_experts' = 0 must be >= 1"),
    ("experts", ["--config.parallel=0"], "'parallel' = 0 must be >= 1"),
    ("experts", ["--config.epochs=0"], "'epochs' = 0 must be >= 1"),
    ("experts", ["--config.lr=-1"], "'lr' = -1 must be > 0"),
    ("experts", ["--config.divergence_limit=-2"], "'divergence_limit' = -2 must be >= 0"),
    ("experts", ["--config.buffer_dir={afile}"], "config key .buffer_dir. = .*afile. is a file"),
    ("experts", ["--resume", "--config.epochs=4"], "was run with another config \\(epochs: 3 -> 4\\)"),
    # select
    ("select", ["--config.select.methods=('bogus',)"], "bogus"),
    ("select", ["--config.select.fractions=(0.0,)"], "fraction must lie in \\(0, 1\\], got 0.0"),
    ("select", ["--config.select.fractions=(1.5,)"], "fraction must lie in \\(0, 1\\], got 1.5"),
    ("select", ["--config.seeds=()"], "'seeds' must list at least one entry"),
    ("select", ["--config.select.pool_per_class=-1"], "'select.pool_per_class' = -1 must be >= 0"),
    ("select", ["--config.pretrain.epochs=0"], "'pretrain.epochs' = 0 must be >= 1"),
    ("select", ["--config.data.stats=bogus"], "'data.stats': unknown statistics 'bogus'"),
    ("select", ["--config.select.options.lcmat_s.greedy=bogus"],
     "'select.options.lcmat_s.greedy': greedy must be one of \\['naive', 'lazy'"),
    ("select", ["--config.select.options.craig.nope=1"], "unknown config key 'select.options.craig.nope'"),
    ("select", ["--resume", "--config.eval.epochs=5"],
     "was run with another config \\(eval.epochs: 300 -> 5\\)"),
    # train-denoiser
    ("train-denoiser", ["--config.model.name=bogus"], "'model.name' = 'bogus' is not one of"),
    ("train-denoiser", ["--config.train.steps=0"], "'train.steps' = 0 must be >= 1"),
    ("train-denoiser", ["--config.train.batch_size=0"], "'train.batch_size' = 0 must be >= 1"),
    ("train-denoiser", ["--config.sample.solver=bogus"], "'sample.solver' = 'bogus' is not one of"),
    ("train-denoiser", ["--config.sample.sigma_max=0.001"],
     "'sample.sigma_min' = 0.002 and 'sample.sigma_max' = 0.001: sigma_max must be above"),
    ("train-denoiser", ["--config.data.name=nope"], "'data.name' = 'nope' is not one of"),
    ("train-denoiser", [], "already holds a train-denoiser run; pass --resume"),
    # sample
    ("sample", [*GMM, "--config.solver.name=bogus"], "'solver.name' = 'bogus' is not one of"),
    ("sample", [*GMM, "--config.solver.steps=0"], "'solver.steps' = 0 must be >= 1"),
    ("sample", [*GMM, "--config.num_samples=0"], "'num_samples' = 0 must be >= 1"),
    ("sample", [*GMM, "--config.batch_size=0"], "'batch_size' = 0 must be >= 1"),
    ("sample", [*GMM, "--config.solver.sigma_min=-1"], "'solver.sigma_min' = -1 must be > 0"),
    ("sample", [*GMM, "--config.solver.sigma_max=0.001"], "sigma_max must be above sigma_min"),
    ("sample", [*GMM, "--config.labels=bogus"], "'labels' = 'bogus' is not 'cycle', 'none'"),
    ("sample", [*GMM, "--config.guidance.name=bogus"], "'guidance.name' = 'bogus' is not one of"),
    ("sample", ["--config.source=bogus"], "'source' = 'bogus' is not one of \\['edm', 'gmm', 'run'\\]"),
    ("sample", ["--config.model_dir={missing}"], "model run directory .*missing does not exist"),
    ("sample", ["--config.model_dir={afile}"], "model run directory .*afile is a file"),
    ("sample", ["--config.model_dir={run:distill}"], "holds no finished denoiser"),
    ("sample", ["--config", "sample_cifar10_edm:foo"], "GUIDANCE 'foo' is not one of"),
    ("sample", ["--config", "sample_digits:x"], "config sample_digits takes no argument"),
    ("sample", ["--config", "sample_cifar10_edm:dg", "--config.source=gmm", "--config.fid.ref="],
     "'guidance.classifier' = .*32x32_classifier.pt does not exist: download DG's 32 px "
     "classifier .* the 64 px one is guided-diffusion's https://openaipublic"),
    ("sample", ["--config.fid.ref={missing}"],
     "'fid.ref': FID reference statistics .*missing: no such file. EDM's are at https://nvlabs"),
    ("sample", ["--config.fid.ref={afile}"], "'fid.ref': .*afile: not a readable .npz"),
    ("sample", ["--config.source=edm", "--config.model_dir={missing}"],
     "'model_dir' = .*missing: no such file; the official networks are at https://nvlabs"),
    ("sample", ["--config.source=edm", "--config.model_dir={afile}"],
     "'model_dir': .*afile: cannot read it as an NVlabs/edm network pickle"),
    ("sample", ["--config.source=edm", "--config.model_dir={run:distill}"],
     "'model_dir': .*run-distill is not a network imported by `jaxdiff import-checkpoint`"),
    # train-discriminator
    ("train-discriminator", ["--config.model_dir={missing}"], "'model_dir': model run directory"),
    ("train-discriminator", ["--config.disc.extractor=bogus"],
     "'disc.extractor' = 'bogus' is not one of \\['none', 'quality_net'\\]"),
    ("train-discriminator", ["--config.train.steps=0"], "'train.steps' = 0 must be >= 1"),
    ("train-discriminator", ["--config.fake.num=0"], "'fake.num' = 0 must be >= 1"),
    ("train-discriminator", ["--config.fake.sigma_max=0.001"], "sigma_max must be above"),
    ("train-discriminator", ["--config.conditional=true"], "needs a class-conditional denoiser"),
    # import-checkpoint
    ("import-checkpoint", ["{missing}", "--out={missing}"], "missing: no such file"),
    ("import-checkpoint", ["{afile}", "--out={missing}"],
     "afile: cannot read it as an NVlabs/edm network pickle"),
    ("import-checkpoint", ["{notimages}", "--out={missing}"], "not an EDM network pickle"),
    ("import-checkpoint", ["{afile}", "--out={run:distill}"],
     "run-distill already exists and is not an empty directory"),
    # show
    ("show", ["{missing}"], "no labelled image set at .*missing"),
    ("show", ["{notimages}"], "is not an image set"),
]


def _digest(path) -> str:
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            with open(os.path.join(root, name), "rb") as f:
                h.update(os.path.relpath(os.path.join(root, name), path).encode() + f.read())
    return h.hexdigest()


def _earlier_run(path, spec) -> str:
    """`path` holding a run of `spec`'s command as a fresh run leaves it (config.json) plus a
    checkpoint and a metrics file."""
    common.open_run_dir(str(path), spec.resolution)
    os.makedirs(path / "checkpoints" / "3")
    (path / "checkpoints" / "3" / "state").write_bytes(b"\x00\x01")
    (path / "metrics.jsonl").write_text('{"step": 3, "loss": 1.0}\n')
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Prepared paths: one existing run directory per command, a trained tiny denoiser, an
    expert store of 3 epochs, image sets, a file and a missing path."""
    root = tmp_path_factory.mktemp("bad_inputs")
    denoiser = root / "denoiser"
    train_denoiser.run(train_denoiser_spec.resolve(tiny_train_denoiser_config(
        denoiser, **{"train.steps": 2, "sample.every": 0, "checkpoint_every": 2})))
    (root / "afile").write_text("not a directory")
    np.savez(root / "notimages.npz", a=np.arange(3))
    save_synset(root / "set8.npz", LabelledSet(np.zeros((2, 8, 8, 1)), np.array([0, 1]), "digits",
                                               np.zeros(1), np.ones(1)))
    save_synset(root / "mnistset.npz", LabelledSet(np.zeros((2, 16, 16, 1)), np.array([0, 1]),
                                                   "mnist", np.zeros(1), np.ones(1)))
    from tests.helpers import placeholder_expert_store
    experts = placeholder_expert_store(root / "experts", "digits", (16, 16, 1), epochs=3)
    runs = {
        "distill": build_config("quickstart", []),
        "evaluate": build_config("evaluate_digits", []),
        "experts": build_config("experts_digits", [("epochs", "3")]),
        "select": build_config("select_digits", []),
        "sample": build_config("sample_digits", [("source", "gmm")]),
    }
    resolvers = {"distill": distill_spec, "evaluate": evaluate_spec, "experts": experts_spec,
                 "select": select_spec, "sample": sample_spec}
    paths = {"missing": str(root / "missing"), "afile": str(root / "afile"),
             "notimages": str(root / "notimages.npz"), "set8": str(root / "set8.npz"),
             "mnistset": str(root / "mnistset.npz"),
             "experts": experts, "run:train-denoiser": str(denoiser)}
    for command, config in runs.items():
        key = "buffer_dir" if command == "experts" else "run_dir"
        config[key] = str(root / f"run-{command}")
        paths[f"run:{command}"] = _earlier_run(root / f"run-{command}",
                                               resolvers[command].resolve(config))
    return paths


def _argv(command, args, world) -> list[str]:
    fill = lambda a: re.sub(r"\{([^}]+)\}", lambda m: world[m.group(1)], a)  # noqa: E731
    argv = [command, *map(fill, args)]
    if command in ("show", "import-checkpoint"):
        return argv
    # every case runs against the command's earlier run (unless it names its own directory)
    key = "buffer_dir" if command == "experts" else "run_dir"
    if command in ("sample", "train-discriminator") and not any("model_dir" in a for a in argv):
        argv.append(f"--config.model_dir={world['run:train-denoiser']}")
    if not any(f"--config.{key}=" in a for a in argv):
        own = "train-denoiser" if command == "train-discriminator" else command
        argv.append(f"--config.{key}={world.get(f'run:{own}', world['missing'] + '-' + own)}")
    return argv


@pytest.mark.parametrize("command, args, words", CASES,
                         ids=[f"{i:02d}-{c}" for i, (c, _, _) in enumerate(CASES)])
def test_bad_input_exits_2_with_a_message_and_touches_nothing(world, command, args, words,
                                                               capsys, monkeypatch):
    monkeypatch.delenv("JAXDIFF_DEBUG", raising=False)
    runs = [p for k, p in world.items() if k.startswith("run:")]
    before = {p: _digest(p) for p in runs}
    with pytest.raises(SystemExit) as e:
        cli.main(_argv(command, args, world))
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "Traceback" not in err
    assert re.search(words, err), err
    assert len(err.strip().splitlines()) <= 6, err          # one message, not a screenful
    assert {p: _digest(p) for p in runs} == before          # no run directory touched
    assert not os.path.exists(world["missing"])


def test_the_suite_has_at_least_fifty_cases_over_every_command():
    assert len(CASES) >= 50
    assert {c for c, _, _ in CASES} == set(cli.COMMANDS) | {"show", "import-checkpoint"}


@pytest.mark.parametrize("debug", ["", "1"])
def test_the_real_process_prints_no_traceback_unless_debugging(tmp_path, debug):
    env = {**os.environ, "JAXDIFF_DEBUG": debug, "JAX_PLATFORMS": "cpu"}
    p = subprocess.run([sys.executable, "-m", "jaxdiff.cli", "evaluate", "--config.ipc=0",
                        f"--config.run_dir={tmp_path / 'r'}"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().endswith("jaxdiff evaluate: config key 'ipc' = 0 must be >= 1")
    assert ("Traceback" in p.stderr) == bool(debug)
    assert not (tmp_path / "r").exists()
