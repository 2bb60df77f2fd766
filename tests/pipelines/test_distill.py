"""`jaxdiff distill` end to end on tiny digits configs: every parameterisation with DM, pixel with
DC, outputs on disk, resume equals an uninterrupted run (also on another device count), bad
budgets fail before any work."""

import json
import os

import numpy as np
import pytest

from jaxdiff import cli
from jaxdiff.config_utils import build_config
from jaxdiff.distill.synset import load_synset
from jaxdiff.pipelines import distill as distill_pipeline
from jaxdiff.specs import distill as distill_spec

from tests.helpers import (MESH_CHANGES, assert_resumed, placeholder_expert_store, resume_on_meshes,
                           tiny_distill_config)


class distill:  # noqa: N801 - the command as the CLI runs it: resolve, then run
    @staticmethod
    def run(config):
        return distill_pipeline.run(distill_spec.resolve(config))


@pytest.mark.parametrize("param,loss", [("ddif", "dm"), ("fred", "dm"), ("pixel", "dm"),
                                        ("pixel", "dc")])
def test_distill_writes_a_loadable_set(tmp_path, param, loss):
    over = {"param.name": param, "loss.name": loss, "param.fred.k": 16}
    if loss == "dc":
        over.update({"loss.dc.outer": 2, "loss.dc.inner": 1, "loss.dc.batch_train": 8})
    out = distill.run(tiny_distill_config(tmp_path, **over))
    for f in ("synthetic.npz", "params.npz", "final.png", "init.png", "metrics.jsonl",
              "results.json", "config.json"):
        assert os.path.exists(tmp_path / f), f
    s = load_synset(str(tmp_path))
    assert s.images.shape[1:] == (8, 8, 1) and s.dataset == "digits"
    assert np.all(np.isfinite(s.images))
    n_pc = len(s.labels) // 10
    np.testing.assert_array_equal(s.labels, np.repeat(np.arange(10), n_pc))
    assert 0.0 <= out["accuracy_mean"] <= 1.0
    budget = 10 * 8 * 8 * 1 * 2                          # IPC 2 of 8x8x1, 10 classes
    assert out["storage_floats"] <= budget
    rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [2, 4] and all(np.isfinite(r["loss"]) for r in rows)


def test_distill_changes_the_images(tmp_path):
    distill.run(tiny_distill_config(tmp_path, **{"param.name": "pixel", "eval.num_runs": 0,
                                   "opt.lr": 0.1, "opt.name": "sgd"}))
    p = np.load(tmp_path / "params.npz")
    init = np.load(tmp_path / "synthetic.npz")  # final images == params for pixel
    np.testing.assert_array_equal(p["params/images"], init["images"])
    # Re-run with zero iterations: the initial set; it must differ from the optimised one.
    distill.run(tiny_distill_config(tmp_path / "zero", **{"param.name": "pixel", "eval.num_runs": 0,
                                            "iterations": 0}))
    z = np.load(tmp_path / "zero" / "params.npz")
    assert not np.allclose(z["params/images"], p["params/images"])


def test_resume_equals_uninterrupted(tmp_path, capsys):
    """DDiF DM stopped after 2 of 4 iterations and resumed: on the mesh of the uninterrupted run
    (8 devices) bitwise its parameters; on another (8 -> 4, 4 -> 8) within 1e-6 (observed:
    bitwise). The 10 instances do not split over 4 or 8 and stay replicated; the real batch of
    8 per class is split over the devices. (A resume on the default single device:
    tests/pipelines/test_loop.py.)"""
    over = {"param.name": "ddif", "eval.num_runs": 0}
    changes = MESH_CHANGES
    reference = changes[0][0]
    distill.run(tiny_distill_config(tmp_path / "full", num_devices=reference, **over))

    def run(d, n, resume):
        cfg = tiny_distill_config(d, num_devices=n, **over, **({} if resume else {"iterations": 2}))
        cfg.resume = resume
        distill.run(cfg)

    runs = resume_on_meshes(run, tmp_path, changes)
    assert "checkpoint written on a mesh of 4 devices (data=4); this run has 8 devices" in \
        capsys.readouterr().out
    a = np.load(tmp_path / "full" / "params.npz")
    for (first, then), d in runs.items():
        b = np.load(d / "params.npz")
        for k in a.files:
            assert_resumed(b[k], a[k], first, then)


def test_existing_run_needs_resume(tmp_path):
    over = {"param.name": "pixel", "eval.num_runs": 0, "iterations": 2}
    distill.run(tiny_distill_config(tmp_path, **over))
    with pytest.raises(FileExistsError, match="--resume"):
        distill.run(tiny_distill_config(tmp_path, **over))


def test_a_run_that_diverges_but_stays_finite_stops_before_writing_results(tmp_path):
    """Pixel DM with SGD at lr 1e9: finite but absurd images by the first log step. The run
    stops there naming the step and the value; no set, images or results are written as final,
    and the same run with the check off finishes."""
    over = {"param.name": "pixel", "opt.name": "sgd", "opt.lr": 1e9, "eval.num_runs": 0}
    with pytest.raises(distill_pipeline.DivergenceError,
                       match=r"diverged at step 2: max \|value\| = .* > divergence_limit = 100"):
        distill.run(tiny_distill_config(tmp_path / "a", **over))
    written = set(os.listdir(tmp_path / "a"))
    assert not written & {"synthetic.npz", "params.npz", "final.png", "results.json"}, written
    distill.run(tiny_distill_config(tmp_path / "b", divergence_limit=0, **over))
    assert np.abs(load_synset(str(tmp_path / "b")).images).max() > 1e3


def test_budget_that_fits_nothing_fails_first(tmp_path):
    # IPC 2 of 8x8x1 images is 128 floats per class; DDiF's 67-float field fits 1, but at IPC 1
    # (64 floats) none fits.
    with pytest.raises(ValueError, match="67 floats per instance.*64 floats per class"):
        distill.run(tiny_distill_config(tmp_path / "r", **{"param.name": "ddif", "ipc": 1}))
    assert not os.path.exists(tmp_path / "r" / "checkpoints")


def test_cli_rejects_unknown_key_and_bad_choice(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["distill", "--config", "quickstart", "--config.param.nmae=pixel"])
    assert "param.name" in capsys.readouterr().err
    with pytest.raises(ValueError, match="loss.name"):
        distill.run(tiny_distill_config(tmp_path, **{"loss.name": "kl"}))


@pytest.mark.parametrize("loss", ["dm"])   # DC's chunks: tests/distill/test_losses.py
def test_real_batches_in_class_chunks_give_the_same_run(tmp_path, loss):
    """class_chunk 3 of 10 classes (groups 3, 3, 3, 1) against all at once, 8 devices: the same
    synthetic set up to float rounding. DC's chunked loss and gradient equal the one-call ones
    at the library level (tests/distill/test_losses.py); its wiring is the same key."""
    over = {"param.name": "pixel", "ipc": 1, "eval.num_runs": 0, "iterations": 3,
            "opt.name": "sgd", "opt.lr": 0.5, "loss.name": loss, "loss.dc.outer": 2,
            "loss.dc.inner": 1, "loss.dc.batch_train": 8, "num_devices": 8}
    distill.run(tiny_distill_config(tmp_path / "all", class_chunk=10, **over))
    distill.run(tiny_distill_config(tmp_path / "chunks", class_chunk=3, **over))
    a = np.load(tmp_path / "all" / "params.npz")["params/images"]
    b = np.load(tmp_path / "chunks" / "params.npz")["params/images"]
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="'class_chunk' = 2: only loss.name dm and dc"):
        distill.run(tiny_distill_config(tmp_path / "lc", class_chunk=2,
                                        **{**over, "loss.name": "lcmat"}))


@pytest.mark.parametrize("loss", ["dm", "dc"])
def test_one_and_eight_devices_agree(tmp_path, loss):
    # pixel IPC 4: 40 instances and 8 real images per class both split over 8 devices.
    over = {"param.name": "pixel", "ipc": 4, "eval.num_runs": 0, "iterations": 3,
            "opt.name": "sgd", "opt.lr": 0.5, "loss.name": loss, "loss.dc.outer": 2,
            "loss.dc.inner": 1, "loss.dc.batch_train": 8}
    distill.run(tiny_distill_config(tmp_path / "one", num_devices=1, **over))
    distill.run(tiny_distill_config(tmp_path / "eight", num_devices=8, **over))
    a = np.load(tmp_path / "one" / "params.npz")["params/images"]
    b = np.load(tmp_path / "eight" / "params.npz")["params/images"]
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_spec_defaults_and_group_learning_rates(tmp_path):
    def resolved(*over):
        return distill_spec.resolve(build_config("distill_cifar10", list(over)))

    spec = resolved(("param.name", "fred"))
    assert (spec.opt.name, spec.opt.lr, spec.opt.momentum) == ("sgd", 1e6, 0.5)
    spec = resolved(("param.name", "ddif"), ("ipc", "10"))
    assert (spec.opt.name, spec.opt.lr) == ("adam", 5e-5)
    assert (spec.param.options["depth"], spec.param.options["width"]) == (2, 6)
    # TM tables: FreD's hyper_params (fred.md §6) for pixel/FreD, DDiF's own (ddif.md §6).
    tm_of = lambda s: (s.loss.tm.syn_steps, s.loss.tm.max_start_epoch, s.loss.tm.lr_lr)  # noqa: E731
    store = placeholder_expert_store(tmp_path / "experts", "cifar10_jpeg", (32, 32, 3))
    spec = resolved(("param.name", "fred"), ("loss.name", "tm"), ("loss.tm.buffer_dir", store))
    assert tm_of(spec) == (50, 5, 1e-7)
    spec = resolved(("param.name", "ddif"), ("loss.name", "tm"), ("loss.tm.buffer_dir", store))
    assert tm_of(spec) == (60, 10, 1e-5) and spec.loss.tm.lr_teacher == 1e-2
    with pytest.raises(ValueError, match="ortho"):
        resolved(("param.name", "fred"), ("param.fred.dct_norm", "ortho"))
    # A group learning rate of 0 freezes that group; the others move.
    distill.run(tiny_distill_config(tmp_path, **{"param.name": "ddif", "eval.num_runs": 0,
                                   "opt.group_lr": "W1=0,b1=0", "param.ddif.warmup_steps": 0}))
    distill.run(tiny_distill_config(tmp_path / "zero", **{"param.name": "ddif", "eval.num_runs": 0,
                                            "iterations": 0, "param.ddif.warmup_steps": 0}))
    p, z = np.load(tmp_path / "params.npz"), np.load(tmp_path / "zero" / "params.npz")
    np.testing.assert_array_equal(p["params/W1"], z["params/W1"])
    assert not np.allclose(p["params/Wo"], z["params/Wo"])
    with pytest.raises(ValueError, match="parameter groups"):
        distill.run(tiny_distill_config(tmp_path / "bad", **{"param.name": "ddif", "opt.group_lr": "W9=1"}))


# ----------------------------------------------------------------------------- trajectory matching
@pytest.fixture(scope="module")
def tiny_experts(tmp_path_factory):
    from jaxdiff.pipelines import experts
    from jaxdiff.specs.experts import resolve as resolve_experts
    d = tmp_path_factory.mktemp("experts")
    cfg = build_config("experts_digits", [
        ("data.image_size", "8"), ("model.width", "8"), ("num_experts", "2"), ("parallel", "2"),
        ("epochs", "3"), ("batch_size", "64"), ("progress", "False"), ("buffer_dir", str(d))])
    experts.run(resolve_experts(cfg))
    return str(d)


def _tm(run_dir, buffer_dir, **over):
    base = {"loss.name": "tm", "loss.tm.buffer_dir": buffer_dir, "loss.tm.syn_steps": 3,
            "loss.tm.expert_epochs": 1, "loss.tm.max_start_epoch": 2, "loss.tm.lr_lr": 1e-3,
            "loss.tm.batch_syn": 8, "opt.name": "sgd", "opt.lr": 10.0, "eval.num_runs": 0}
    base.update(over)
    return tiny_distill_config(run_dir, **base)


@pytest.mark.parametrize("param", ["pixel", "ddif"])
def test_tm_distills_and_learns_the_step_size(tmp_path, tiny_experts, param):
    over = {"param.name": param, "eval.num_runs": 1}
    if param == "ddif":
        over.update({"opt.name": "adam", "opt.lr": 1e-3})
    out = distill.run(_tm(tmp_path, tiny_experts, **over))
    rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    assert all(0 < r["loss"] < 10 for r in rows)
    s = load_synset(str(tmp_path))
    # The learned step size moved away from lr_teacher and is what evaluation used and saved.
    assert out["eval_lr"] != pytest.approx(0.01, rel=1e-6) and out["eval_lr"] >= 1e-3
    assert s.lr == pytest.approx(out["eval_lr"])
    assert rows[-1]["syn_lr"] == pytest.approx(out["eval_lr"], rel=1e-6)


def test_tm_resume_equals_uninterrupted(tmp_path, tiny_experts):
    """Pixel TM, 40 instances split over the 8 devices (5 each), stopped after 2 of 4 iterations
    and resumed: on the 8 devices bitwise the uninterrupted 8-device run; on another mesh (8 -> 4
    devices, 10 instances each) within 1e-6 (observed: bitwise)."""
    over = {"param.name": "pixel", "ipc": 4}
    distill.run(_tm(tmp_path / "full", tiny_experts, num_devices=8, **over))

    def run(d, n, resume):
        cfg = _tm(d, tiny_experts, num_devices=n, **over, **({} if resume else {"iterations": 2}))
        cfg.resume = resume
        distill.run(cfg)

    a = np.load(tmp_path / "full" / "params.npz")["params/images"]
    for (first, then), d in resume_on_meshes(run, tmp_path).items():
        assert_resumed(np.load(d / "params.npz")["params/images"], a, first, then)


def test_tm_bad_experts(tmp_path, tiny_experts):
    with pytest.raises(ValueError, match="buffer_dir"):
        distill.run(_tm(tmp_path / "a", ""))
    with pytest.raises(ValueError, match="exceeds the 3 epochs"):
        distill.run(_tm(tmp_path / "b", tiny_experts, **{"loss.tm.max_start_epoch": 3}))
    with pytest.raises(FileNotFoundError, match="no expert store"):
        distill.run(_tm(tmp_path / "c", str(tmp_path / "nowhere")))


def test_lcmat_with_rho_zero_equals_dc_and_differs_otherwise(tmp_path):
    over = {"param.name": "pixel", "eval.num_runs": 0, "iterations": 2, "opt.name": "sgd",
            "opt.lr": 0.5, "loss.dc.outer": 2, "loss.dc.inner": 1, "loss.dc.batch_train": 8}
    distill.run(tiny_distill_config(tmp_path / "dc", **{"loss.name": "dc"}, **over))
    distill.run(tiny_distill_config(tmp_path / "lc0", **{"loss.name": "lcmat", "loss.lcmat.rho": 0.0}, **over))
    distill.run(tiny_distill_config(tmp_path / "lc", **{"loss.name": "lcmat", "loss.lcmat.rho": 0.5}, **over))
    dc, lc0, lc = (np.load(tmp_path / d / "params.npz")["params/images"] for d in ("dc", "lc0", "lc"))
    np.testing.assert_allclose(lc0, dc, rtol=1e-5, atol=1e-6)
    assert not np.allclose(lc, dc, rtol=1e-3, atol=1e-4)


def test_tm_one_and_eight_devices_agree(tmp_path, tiny_experts):
    over = {"param.name": "pixel", "ipc": 4, "iterations": 2}   # 40 instances: split over 8
    distill.run(_tm(tmp_path / "one", tiny_experts, num_devices=1, **over))
    distill.run(_tm(tmp_path / "eight", tiny_experts, num_devices=8, **over))
    a = np.load(tmp_path / "one" / "params.npz")["params/images"]
    b = np.load(tmp_path / "eight" / "params.npz")["params/images"]
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
