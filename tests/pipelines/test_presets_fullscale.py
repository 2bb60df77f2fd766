"""The full-scale presets (ImageNet subsets, Tiny-ImageNet, CIFAR-100; distill and experts) on
synthetic TFDS data of the presets' shapes: 128 px and 10 classes, 64 px and 200 classes, 32 px
and 100 classes (`jaxdiff.data.synthetic`).

* Always: every preset resolves to the papers' values (tables, SIREN, K, learning rates, depth
  for the image size, statistics), and bad settings are refused before anything runs.
* With JAXDIFF_FULLSCALE_TESTS=1 (about 2.5 CPU-minutes, compile-bound: ~80 XLA programs per
  experts + distill pair): each family runs its experts preset and its distill preset through
  the CLI (`jaxdiff.cli.main`, in process) for 2 iterations. CPU-sized overrides only: 2
  student steps, a width-8 ConvNet (the preset's depth: D5 / D4 / D3), no DSA, no DDiF warm-up,
  1 expert of 2 epochs, one device. Checked: the synthetic set has the budget's instances of
  every class, the depth resolved from the image size, the experts store holds the preset's
  data and model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from jaxdiff import cli
from jaxdiff.config_utils import load_config, set_values
from jaxdiff.data import synthetic
from jaxdiff.data.imagenet import SUBSETS
from jaxdiff.distill.synset import load_synset


# instances per class at IPC 1 (the budget): DDiF at 128 px 51 (at 256 px 55), DDiF CIFAR-100
# 17, FreD Tiny (K = 256) 16, FreD at 128 px (K = 2048) 8: the fixtures hold enough photos
TRAIN_128, TRAIN_TINY, TRAIN_C100 = 56, 16, 18


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Fake prepared data for all three families, found through JAXDIFF_DATA_DIR (as a user
    would set it), with a private jaxdiff cache."""
    root = tmp_path_factory.mktemp("tfds")
    counts = {w: (TRAIN_128, 2) for w in SUBSETS["imagenette"].wnids}
    counts["n01443537"] = (3, 1)   # a class of no subset: never decoded
    synthetic.write_imagenet2012(root, counts, size_range=(110, 170))
    z = root / "tiny.zip"
    synthetic.write_tiny_zip(z, synthetic.fake_wnids(200), TRAIN_TINY, 1)
    from jaxdiff.data.tiny_imagenet import prepare
    prepare(z, root)
    synthetic.write_cifar100(root, TRAIN_C100, 1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAXDIFF_DATA_DIR", str(root))
        mp.setenv("JAXDIFF_CACHE_DIR", str(root / "cache"))
        # the fit check before a run (where there is one) compares with this budget, not with
        # the RAM share of each of the 8 fake CPU devices
        mp.setenv("JAXDIFF_PLAN_DEVICE_MEMORY", "16GiB")
        yield root


def preset_ref(name: str, arg: str | None) -> str:
    """What `--config` takes for preset `name` with argument `arg` (`NAME:ARG`)."""
    return name if arg is None else f"{name}:{arg}"


def run_cli(command: str, config: str, overrides: dict) -> None:
    argv = [command, "--config", config] + [f"--config.{k}={v}" for k, v in overrides.items()]
    assert cli.main(argv) == 0


RUNS = pytest.mark.skipif(
    os.environ.get("JAXDIFF_FULLSCALE_TESTS", "").strip().lower() not in ("1", "true", "yes", "on"),
    reason="the 2-iteration runs of the full-scale presets take ~2.5 CPU-minutes: set "
           "JAXDIFF_FULLSCALE_TESTS=1")

# CPU-sized overrides: no DSA (its compile dominates on the CPU; DSA has its own tests), a
# width-8 ConvNet, no DDiF warm-up fit, one device; the shapes stay the preset's.
CPU = {"num_devices": 1, "progress": False, "model.width": 8}
DISTILL_CPU = {**CPU, "iterations": 2, "log_every": 1, "checkpoint_every": 2,
               "eval.num_runs": 0, "eval.compare_random": False, "param.ddif.warmup_steps": 0,
               "loss.dsa_strategy": "none", "eval.dsa_strategy": "none"}
TM_CPU = {"loss.tm.syn_steps": 2, "loss.tm.expert_epochs": 1, "loss.tm.max_start_epoch": 1}
EXPERTS_CPU = {**CPU, "num_experts": 1, "parallel": 1, "epochs": 2, "batch_size": 64,
               "dsa_strategy": "none"}


def run_experts(tmp: Path, name: str, arg: str | None, shape, classes: int) -> Path:
    """The experts preset, 1 expert x 2 epochs: the store holds the preset's data and model."""
    buf = tmp / f"experts_{name}"
    run_cli("experts", preset_ref(name, arg), {**EXPERTS_CPU, "buffer_dir": buf})
    from jaxdiff.distill.experts import ExpertStore
    store = ExpertStore(buf)
    assert store.meta["image_shape"] == list(shape) and store.meta["num_classes"] == classes
    assert store.meta["model"]["depth"] == 0 and len(store) == 1   # depth by image size
    return buf


def check_distill(run_dir: Path, per_class: int, classes: int, shape, depth: int) -> dict:
    """The run wrote a synthetic set of the budget's instance count per class and resolved the
    ConvNet depth of the image size."""
    s = load_synset(str(run_dir))
    assert s.images.shape == (per_class * classes, *shape)
    assert np.array_equal(np.bincount(s.labels, minlength=classes), [per_class] * classes)
    cfg = json.loads((run_dir / "config.json").read_text())
    assert any(f"model.depth -> {depth}" in n for n in cfg["resolved"])
    assert len([json.loads(r) for r in open(run_dir / "metrics.jsonl")]) == 2
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow
@RUNS
def test_imagenet_subset_presets_run(data_root, tmp_path):
    buf = run_experts(tmp_path, "experts_imagenet_subset", "imagenette,128", (128, 128, 3), 10)
    # FreD (8 instances per class): DDiF's 510 fields of 128 x 128 take ~5 GiB to decode with
    # gradients, too much for this test; DDiF TM runs end to end on CIFAR-100 below, and its
    # 128 px settings are checked in test_imagenet_subset_settings
    run = tmp_path / "fred_tm"
    run_cli("distill", preset_ref("distill_imagenet_subset", "imagenette,128,1,fred_tm"),
            {**DISTILL_CPU, **TM_CPU, "loss.tm.buffer_dir": buf, "run_dir": run,
             "eval.num_runs": 1, "eval.epochs": 1})
    out = check_distill(run, 8, 10, (128, 128, 3), depth=5)
    assert len(out["accuracy_runs"]) == 1 and out["dataset"] == "imagenette"


@pytest.mark.slow
@RUNS
def test_tiny_presets_run(data_root, tmp_path):
    buf = run_experts(tmp_path, "experts_tiny", None, (64, 64, 3), 200)
    run = tmp_path / "fred_tm"
    run_cli("distill", preset_ref("distill_tiny", "1,fred_tm"),
            {**DISTILL_CPU, **TM_CPU, "loss.tm.batch_syn": 200, "loss.tm.buffer_dir": buf,
             "run_dir": run})
    check_distill(run, 16, 200, (64, 64, 3), depth=4)


@pytest.mark.slow
@RUNS
def test_cifar100_presets_run(data_root, tmp_path):
    buf = run_experts(tmp_path, "experts_cifar100", None, (32, 32, 3), 100)
    run = tmp_path / "ddif_tm"
    run_cli("distill", preset_ref("distill_cifar100", "1,ddif_tm"),
            {**DISTILL_CPU, **TM_CPU, "loss.batch_real": 8, "loss.tm.buffer_dir": buf,
             "run_dir": run})
    check_distill(run, 17, 100, (32, 32, 3), depth=3)


# ----------------------------------------------------------------------------- settings
def preset(name: str, arg: str | None, **over):
    """The config `--config NAME:ARG` loads, with `{dotted key: value}` set (typed values)."""
    return set_values(load_config(preset_ref(name, arg)), **over)


def resolved(name, arg, tmp, **over):
    """The distill spec of a preset, a placeholder expert store where it uses TM."""
    from jaxdiff.specs.distill import resolve
    from tests.helpers import placeholder_expert_store
    c = preset(name, arg, **over)
    if c.loss.name == "tm":
        shape = get_info_shape(c)
        c.loss.tm.buffer_dir = placeholder_expert_store(
            tmp / f"store_{c.data.name}_{shape[0]}", c.data.name, shape, epochs=50)
    c.run_dir = str(tmp / "run")
    return resolve(c)


def get_info_shape(c):
    from jaxdiff import data
    return data.get_info(c.data.name, image_size=c.data.image_size or None).image_shape


def test_imagenet_subset_settings(data_root, tmp_path):
    s = resolved("distill_imagenet_subset", "imagenette,128,1,ddif_tm", tmp_path)
    assert s.data.info.image_shape == (128, 128, 3) and s.data.info.num_classes == 10
    assert s.data.info.mean == (0.485, 0.456, 0.406) and s.model.depth == 5
    o = s.param.options
    assert (o["depth"], o["width"], o["w0_initial"], o["w0"]) == (3, 20, 30.0, 40.0)
    assert (o["warmup_steps"], o["warmup_lr"]) == (5000, 5e-4)
    assert s.param.budget.instances_per_class == 51            # ddif.md §3
    t = s.loss.tm
    assert (t.syn_steps, t.expert_epochs, t.max_start_epoch, t.lr_lr, t.lr_teacher,
            t.batch_syn, t.min_syn_lr) == (20, 2, 10, 1e-6, 0.01, 102, 1e-3)
    assert (s.opt.name, s.opt.lr, s.iterations, s.eval_every) == ("adam", 1e-4, 15000, 500)
    assert (s.eval.epochs, s.eval.num_runs) == (1000, 5) and s.loss.dsa_strategy
    s = resolved("distill_imagenet_subset", "imagenette,256,1,ddif_dm", tmp_path)
    assert s.data.info.image_shape == (256, 256, 3) and s.model.depth == 6
    assert s.param.options["width"] == 40 and s.param.budget.instances_per_class == 55
    assert (s.opt.name, s.opt.lr, s.iterations) == ("adam", 5e-5, 20000)
    s = resolved("distill_imagenet_subset", "imagenette,128,1,fred_tm", tmp_path)
    assert s.param.options["k"] == 2048 and s.param.budget.instances_per_class == 8
    assert (s.opt.name, s.opt.lr, s.opt.momentum, s.loss.tm.batch_syn) == ("sgd", 1e9, 0.5, 0)
    assert (s.loss.tm.syn_steps, s.loss.tm.max_start_epoch, s.loss.tm.lr_lr) == (20, 10, 1e-6)
    # settings beyond the fixture's class sizes: the config values alone
    c = preset("distill_imagenet_subset", "imagesquawk,128,50,ddif_tm")
    assert (c.param.ddif.width, c.loss.tm.syn_steps, c.loss.tm.max_start_epoch,
            c.loss.tm.lr_lr) == (40, 40, 20, 1e-5)
    c = preset("distill_imagenet_subset", "imagewoof,128,10,fred_dc")
    assert (c.opt.lr, c.iterations, c.param.fred.k, c.loss.name) == (1e5, 1000, 2048, "dc")
    e = preset("experts_imagenet_subset", "imagewoof,128")   # 4 experts a program fit 80 GiB
    assert (e.data.name, e.data.image_size, e.parallel, e.epochs, e.num_experts, e.zca) == (
        "imagewoof", 128, 4, 50, 100, False)


def test_tiny_and_cifar100_settings(data_root, tmp_path):
    s = resolved("distill_tiny", "1,fred_tm", tmp_path)
    assert s.data.info.image_shape == (64, 64, 3) and s.data.info.num_classes == 200
    assert s.model.depth == 4 and s.param.budget.instances_per_class == 16
    assert (s.loss.tm.syn_steps, s.loss.tm.max_start_epoch, s.loss.tm.lr_lr) == (30, 30, 1e-4)
    assert (s.opt.lr, s.opt.momentum) == (3e8, 0.5)
    c = preset("distill_tiny", "50,pixel_tm")
    assert (c.loss.tm.syn_steps, c.loss.tm.max_start_epoch, c.opt.lr, c.iterations,
            c.loss.tm.min_syn_lr) == (80, 40, 1e4, 5000, 0.0)
    s = resolved("distill_cifar100", "10,ddif_tm", tmp_path, **{"loss.batch_real": 8})
    o = s.param.options                                          # jaxdiff's tables, filled
    assert (o["depth"], o["width"], s.param.budget.instances_per_class) == (2, 15, 92)
    assert (s.loss.tm.syn_steps, s.loss.tm.max_start_epoch, s.opt.lr) == (60, 40, 1e-4)
    assert s.model.depth == 3
    stats = {m: preset("distill_cifar100", f"1,{m}").data.stats
             for m in ("ddif_tm", "ddif_dm", "fred_tm", "fred_dm", "pixel_dm")}
    assert stats == {"ddif_tm": "cifar10", "ddif_dm": "cifar10", "fred_tm": "cifar10",
                     "fred_dm": "cifar100", "pixel_dm": "cifar100"}   # dd-common.md §1.1
    c = preset("distill_cifar100", "1,fred_dc")
    assert (c.loss.dsa_strategy, c.eval.epochs) == ("none", 300)
    assert preset("experts_cifar100", None).data.stats == "cifar10"


def test_bad_settings_are_refused(data_root, tmp_path):
    from jaxdiff.specs.base import SpecError
    from jaxdiff.data import MissingClassesError
    with pytest.raises(SpecError, match="model.depth.*100"):     # no ConvNet depth for 100 px
        resolved("distill_imagenet_subset", "imagenette,128,1,fred_dm", tmp_path,
                 **{"data.image_size": 100})
    with pytest.raises(SpecError, match="160 instances per class.*tiny_imagenet train has 16"):
        resolved("distill_tiny", "10,fred_tm", tmp_path)         # IPC beyond the class sizes
    with pytest.raises(SpecError, match="697 instances per class.*imagenette train has 56"):
        resolved("distill_imagenet_subset", "imagenette,128,50,ddif_tm", tmp_path)
    with pytest.raises(MissingClassesError, match="10 of its 10 classes: n01806143 \\(peacock\\)"):
        resolved("distill_imagenet_subset", "imagesquawk,128,1,fred_dm", tmp_path)
    for name, arg, why in (
            ("distill_imagenet_subset", "imagenette,128,50,fred_tm",
             "IPC = 50 is not one of 1, 10"),
            ("distill_imagenet_subset", "imagenette,96,1,ddif_tm", "RES = 96"),
            ("distill_imagenet_subset", "imagenet,128,1,ddif_tm", "SUBSET = 'imagenet'"),
            ("distill_tiny", "10,ddif_tm", "METHOD = 'ddif_tm'"),
            ("distill_cifar100", "10", "IPC,METHOD"),
            ("experts_imagenet_subset", "imagewoof,64", "RES = 64")):
        with pytest.raises(ValueError, match=why):
            preset(name, arg)
    with pytest.raises(SystemExit) as e:                          # the CLI: exit 2, no traceback
        cli.main(["distill", "--config", preset_ref("distill_tiny", "7,fred_tm")])
    assert e.value.code == 2
