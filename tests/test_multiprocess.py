"""The real `jaxdiff` CLI as 2 processes x 4 fake CPU devices on loopback, against 1 x 8.

Each command runs twice on the same tiny config: one process with 8 devices, and two processes
with 4 devices each joined by a loopback coordinator (tests/helpers.start_cli). Results must
agree; the tolerance per command is what XLA:CPU's arithmetic allows:

* distill DDiF DM resumed on 1 x 4 devices within 1e-6 of 1 x 8 (observed 3e-8: the real
  batches taken a class at a time, `class_chunk` auto on CPU, reduce in another order on 4
  devices a process; evaluation accuracies within 0.2 percentage points);
* bitwise: pixel TM parameters, evaluation accuracies, selections of
  `uniform`, train-denoiser's final loss and the experts' first epochs — the same programs on
  the same per-device data;
* experts' later epochs within 1e-6 absolute (observed 1.5e-8): XLA:CPU splits some reductions
  differently when a process owns 4 devices instead of 8 (1 x 4 differs from 1 x 8 the same way,
  so this is the device count per process, not multi-process);
* samples within 1e-4 absolute on values of order 1 (observed 2e-5, the same cause); the
  selection model's features (pre-trained and extracted over 8 devices) within 1e-5 (observed
  5e-7, the same cause);
  LCMat-S's selection may swap a near-tie (observed 1 of 143 indices), so >= 95 % is shared.

Also: killing one process makes the other exit with an error within a bounded time (the
heartbeat timeout is `helpers.TEST_HEARTBEAT_S` here), `--resume` with 2 processes continues,
and a resume on another mesh (1 process x 4 devices) finishes with the uninterrupted result;
bad start-ups (processes that disagree on the config or the process count, a reused id, a busy
port, no coordinator, incomplete flags) stop every process with a message naming the problem.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import TEST_HEARTBEAT_S, run_cli, start_cli, wait_cli

pytestmark = pytest.mark.slow

Q = ["--config.progress=False"]
# Tiny configs, so compiling dominates: `conftest` passes its fast-compile XLA flags to the
# processes (the multi-process part takes 2.5 instead of 3.6 minutes alone).


def _both(tmp_path, name, args, *, extra=()):
    """Run `args` (+ `--config.<dir key>=<dir>`) as 1 x 8 and 2 x 4; returns the two dirs."""
    key, rest = args[0], args[1:]
    one, two = tmp_path / f"{name}_1x8", tmp_path / f"{name}_2x4"
    run_cli([*rest, f"--config.{key}={one}", *extra], processes=1, devices=8)
    out = run_cli([*rest, f"--config.{key}={two}", *extra], processes=2, devices=4)
    assert "process 1 of 2: 4 local / 8 global devices (cpu), mesh data=8" in out[1]
    return one, two


def _npz(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _assert_same_npz(a, b, atol=0.0):
    a, b = _npz(a), _npz(b)
    assert a.keys() == b.keys()
    for k in a:
        if a[k].dtype.kind == "f" and atol:
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=atol, err_msg=k)
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _results(d):
    with open(os.path.join(d, "results.json")) as f:
        return json.load(f)


def _only_process0_wrote(d):
    """No temporary or per-process leftovers: files are written once, by process 0."""
    names = [n for _, _, fs in os.walk(d) for n in fs]
    assert not [n for n in names if ".tmp" in n or n.startswith(".process_check")], names


DISTILL = ["run_dir", "distill", "--config", "quickstart", "--config.data.image_size=8",
           "--config.ipc=2", "--config.model.width=8", "--config.loss.batch_real=8",
           "--config.eval.epochs=2", "--config.eval.num_runs=1",
           "--config.eval.compare_random=False", "--config.param.ddif.warmup_steps=5",
           "--config.log_every=2", "--config.checkpoint_every=2", *Q]


def test_distill_ddif_dm_kill_then_resume_equals_one_process(tmp_path):
    """1 x 8 uninterrupted vs 2 x 4 killed after its first checkpoint, resumed with 2 x 4 and
    finished on 1 x 4: bitwise the same parameters and accuracy."""
    one = tmp_path / "ddif_1x8"
    run_cli([*DISTILL[1:], f"--config.run_dir={one}", "--config.iterations=6"], processes=1,
            devices=8)

    # kill -9 process 1 once a checkpoint exists: process 0 must stop on its own, in bounded time
    cut = tmp_path / "cut"
    procs = start_cli([*DISTILL[1:], f"--config.run_dir={cut}", "--config.iterations=400"],
                      processes=2, devices=4)
    deadline = time.monotonic() + 240                 # ~15 s on a quiet machine
    while (not (cut / "checkpoints" / "2").is_dir() and time.monotonic() < deadline
           and all(p.poll() is None for p in procs)):
        time.sleep(0.2)
    if not (cut / "checkpoints" / "2").is_dir():
        res = wait_cli(procs, timeout=1)
        pytest.fail("no checkpoint appeared:\n" + "\n\n".join(
            f"process {i} exited {rc}:\n{text[-2000:]}" for i, (rc, text) in enumerate(res)))
    procs[1].kill()
    t0 = time.monotonic()
    (rc0, text0), _ = wait_cli(procs, timeout=TEST_HEARTBEAT_S + 90)
    assert rc0 not in (0, None), text0[-2000:]          # exited with an error, did not hang
    assert time.monotonic() - t0 < TEST_HEARTBEAT_S + 45  # noticed after ~0.8 x the heartbeat
    assert ("stopped on the error above" in text0 and "--resume" in text0
            or "another task died" in text0), text0[-2000:]

    # resume with 2 processes to step 4, then on another mesh (1 process x 4 devices) to 6:
    # Orbax restores onto the new mesh, and the result is still the uninterrupted one
    out = run_cli([*DISTILL[1:], f"--config.run_dir={cut}", "--config.iterations=4",
                   "--resume"], processes=2, devices=4)
    assert "resumed from" in out[0]
    out = run_cli([*DISTILL[1:], f"--config.run_dir={cut}", "--config.iterations=6",
                   "--resume"], processes=1, devices=4)
    assert f"resumed from {cut}/checkpoints/4" in out[0]
    # The last two iterations ran on 1 x 4 devices: float rounding (observed 3e-8), see above.
    _assert_same_npz(one / "params.npz", cut / "params.npz", atol=1e-6)
    accuracies = _results(one)["accuracy_runs"], _results(cut)["accuracy_runs"]
    assert accuracies[0] == pytest.approx(accuracies[1], abs=2e-3), accuracies
    _only_process0_wrote(cut)


def test_experts_and_tm_pixel(tmp_path):
    experts = ["buffer_dir", "experts", "--config", "experts_digits", "--config.data.image_size=8",
               "--config.model.width=4", "--config.num_experts=8", "--config.parallel=8",
               "--config.epochs=2", *Q]
    one, two = _both(tmp_path, "experts", experts)       # the pool split over all 8 devices
    for i in range(8):
        a = np.load(one / f"expert_{i:05d}.npy")
        b = np.load(two / f"expert_{i:05d}.npy")
        np.testing.assert_array_equal(a[:2], b[:2])
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert _results(two)["num_experts_complete"] == 8
    _only_process0_wrote(two)

    tm = ["run_dir", "distill", "--config", "quickstart", "--config.data.image_size=8",
          "--config.param.name=pixel", "--config.ipc=1", "--config.loss.name=tm",
          f"--config.loss.tm.buffer_dir={one}", "--config.loss.tm.syn_steps=3",
          "--config.loss.tm.expert_epochs=1", "--config.loss.tm.max_start_epoch=1",
          "--config.loss.tm.lr_lr=1e-5", "--config.model.width=4", "--config.iterations=4",
          "--config.log_every=2", "--config.checkpoint_every=2", "--config.eval.epochs=1",
          "--config.eval.num_runs=1", "--config.eval.compare_random=False", *Q]
    one, two = _both(tmp_path, "tm", tm)
    _assert_same_npz(one / "params.npz", two / "params.npz")
    _assert_same_npz(one / "synthetic.npz", two / "synthetic.npz")


def test_evaluate_and_select(tmp_path):
    evaluate = ["run_dir", "evaluate", "--config", "evaluate_digits", "--config.ipc=2",
                "--config.model.width=8", "--config.train.epochs=1", "--config.train.num_runs=2",
                "--config.train.eval_epochs=(1,)", *Q]
    one, two = _both(tmp_path, "evaluate", evaluate)
    assert _results(one)["accuracy_runs"] == _results(two)["accuracy_runs"]

    select = ["run_dir", "select", "--config", "select_digits", "--config.data.image_size=8",
              "--config.seeds=(0,)", "--config.select.methods=('uniform','lcmat_s')",
              "--config.select.fractions=(0.1,)", "--config.pretrain.model.width=8",
              "--config.pretrain.epochs=1", "--config.pretrain.batch_size=128",
              "--config.pretrain.checkpoint_every=4", "--config.pretrain.log_every=4",
              "--config.eval.model.width=8", "--config.eval.epochs=2",
              "--config.eval.num_runs=2", *Q]
    # Each run pre-trains its own selection model (under its run_dir): batches split over 8
    # devices, features extracted over 8, classes selected on 8, the 2 runs evaluated on 2.
    one, two = _both(tmp_path, "select", select)
    feats = [next((d / "pretrained").glob("*/features.npz")) for d in (one, two)]
    _assert_same_npz(*feats, atol=1e-5)
    sel = "selections/uniform_f0.1_s0.npz"
    _assert_same_npz(one / sel, two / sel)
    a, b = (_npz(d / "selections/lcmat_s_f0.1_s0.npz")["indices"] for d in (one, two))
    assert len(a) == len(b) and len(set(a) & set(b)) >= 0.95 * len(a)
    rows = [{r["name"]: r["accuracy_runs"] for r in _results(d)["rows"]} for d in (one, two)]
    assert rows[0]["uniform_f0.1_s0"] == rows[1]["uniform_f0.1_s0"]
    _only_process0_wrote(two)


def test_train_denoiser_and_samplers(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXDIFF_CACHE_DIR", str(tmp_path / "cache"))   # one quality net
    td = ["run_dir", "train-denoiser", "--config", "train_denoiser_digits",
          "--config.model.name=mlp", "--config.model.hidden=32", "--config.model.depth=1",
          "--config.model.emb_dim=16", "--config.train.steps=6", "--config.train.batch_size=16",
          "--config.train.warmup_steps=2", "--config.log_every=2", "--config.checkpoint_every=3",
          "--config.sample.every=2", "--config.sample.num=8", "--config.sample.steps=2", *Q]
    one, two = _both(tmp_path, "td", td)
    assert _results(one)["final_loss"] == _results(two)["final_loss"]
    model = str(one)

    disc = ["run_dir", "train-discriminator", "--config", "train_discriminator_digits",
            f"--config.model_dir={model}", "--config.fake.num=16", "--config.fake.batch_size=16",
            "--config.fake.steps=2", "--config.disc.width=8", "--config.disc.depth=1",
            "--config.disc.emb_dim=8", "--config.train.steps=4", "--config.train.batch_size=8",
            "--config.log_every=2", "--config.checkpoint_every=2", *Q]
    one, two = _both(tmp_path, "disc", disc)
    assert _results(one)["final_loss"] == pytest.approx(_results(two)["final_loss"], abs=1e-5)

    sample = ["run_dir", "sample", f"--config.model_dir={model}", "--config.solver.steps=3",
              "--config.num_samples=8", "--config.batch_size=8",
              "--config.quality.enabled=False", *Q]
    guidances = {   # DiffRS and LiDAR both run plain Heun inside (base proposals, lookahead)
        "diffrs": ["--config", "sample_digits_diffrs", f"--config.guidance.disc_dir={one}",
                   "--config.guidance.warmup=8", "--config.guidance.warmup_batch=8"],
        "lidar": ["--config", "lidar_digits", "--config.guidance.num_lookahead=4",
                  "--config.guidance.lookahead_steps=2",
                  "--config.guidance.reward.quality.epochs=1",
                  "--config.guidance.reward.quality.width=8",
                  "--config.guidance.reward.quality.feature_dim=16"],
    }
    for name, args in guidances.items():
        one, two = _both(tmp_path, name, [sample[0], sample[1], *args, *sample[2:]])
        _assert_same_npz(one / "samples.npz", two / "samples.npz", atol=1e-4)
        assert _results(one)["nfe"] == _results(two)["nfe"], name
        _only_process0_wrote(two)


_ROOT = Path(__file__).resolve().parents[1]
EDM_PICKLE = next((d / "edm_ddpmpp_cond.pkl" for d in (_ROOT.parent / "shared" / "fixtures" / "edm",
                                                       _ROOT / "shared" / "fixtures" / "edm")
                   if d.is_dir()), None)


@pytest.mark.skipif(EDM_PICKLE is None, reason="needs shared/fixtures/edm")
@pytest.mark.skipif(not os.environ.get("JAXDIFF_EXTRA_TESTS"),
                    reason="3 processes compiling the Inception (~1-3 min; CI time budget): set "
                           "JAXDIFF_EXTRA_TESTS=1")
def test_edm_sampling_with_streaming_fid(tmp_path):
    """`jaxdiff sample` of an EDM network with Inception FID (the benchmark presets' path) on
    2 x 4 equals 1 x 8: the same samples (up to XLA:CPU's per-device-count rounding, as for
    Heun above), the same number of scored images and the same FID in both processes."""
    from jaxdiff.fid import stats

    ref = tmp_path / "ref.npz"
    stats.save_reference(ref, np.full(2048, 0.1), np.eye(2048) * 0.5)
    got = {}
    for name, processes, devices in (("1x8", 1, 8), ("2x4", 2, 4)):
        d = tmp_path / name
        d.mkdir()
        run_cli(["sample-fid", d], processes=processes, devices=devices, module="tests.worker",
                env={"EDM_PICKLE": str(EDM_PICKLE), "FID_REF": str(ref),
                     "RUN_DIR": str(d / "run")})
        got[name] = [_npz(d / f"process{i}.npz") for i in range(processes)]
    (one,), (p0, p1) = got["1x8"], got["2x4"]
    assert one["fid_num_samples"] == p0["fid_num_samples"] == p1["fid_num_samples"] == 12
    assert p0["fid"] == p1["fid"]
    assert p0["fid"] == pytest.approx(one["fid"], rel=1e-4)
    a, b = (_npz(tmp_path / n / "run" / "samples.npz") for n in ("1x8", "2x4"))
    # A random network's samples reach ~1e2 and its layers amplify rounding: the per-device
    # batch of 1 vs 2 rounds differently (observed 1.8e-3 at a scale of ~1e2, i.e. 1.5e-5).
    scale = float(np.max(np.abs(a["samples"])))
    np.testing.assert_allclose(b["samples"], a["samples"], rtol=0, atol=1e-4 * scale)
    np.testing.assert_array_equal(b["labels"], a["labels"])
    _only_process0_wrote(tmp_path / "2x4" / "run")


def test_quality_net_trained_over_all_devices(tmp_path):
    """2 x 4 processes train the quality net once, its batches split over all 8 devices: both
    processes hold the same network, cached once and loaded back bit-identically, equal to the
    1 x 8 one up to float reduction order (parameters observed within 1e-7)."""
    nets = {}
    for name, processes, devices in (("1x8", 1, 8), ("2x4", 2, 4)):
        d = tmp_path / name
        d.mkdir()
        out = run_cli(["quality-net", d], processes=processes, devices=devices,
                      module="tests.worker", env={"JAXDIFF_CACHE_DIR": str(d / "c")})
        assert all("on 8 of 8 devices" in text for text in out), out[0][-2000:]
        nets[name] = [_npz(d / f"process{i}.npz") for i in range(processes)]
    (one,), (p0, p1) = nets["1x8"], nets["2x4"]
    for k in p0:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
        np.testing.assert_array_equal(p0[k], p0[k.replace("trained/", "loaded/")], err_msg=k)
        # a conv bias before instance norm has gradient 0 up to rounding, so Adam moves it by
        # noise (tests/diffusion/test_quality_net.py); it never reaches the output
        if not (".blocks." in k and ".conv.bias" in k):
            np.testing.assert_allclose(p0[k], one[k], rtol=0, atol=1e-5, err_msg=k)
    _only_process0_wrote(tmp_path / "2x4" / "c")


def test_real_batches_each_process_reads_its_share(tmp_path):
    """DM's real batches on 2 x 4: each process reads exactly the rows of its devices' half of
    every class's batch (no row twice, none of the other half), and the global batches equal
    the 1 x 8 ones bitwise. The split's cache entry is built once, by process 0, and read by
    process 1 (`distributed.main_first`)."""
    got = {}
    for name, processes, devices in (("1x8", 1, 8), ("2x4", 2, 4)):
        d = tmp_path / name
        d.mkdir()
        run_cli(["real-batches", d], processes=processes, devices=devices, module="tests.worker")
        got[name] = [_npz(d / f"process{i}.npz") for i in range(processes)]
    (one,), (p0, p1) = got["1x8"], got["2x4"]
    assert [bool(p["entry_found"]) for p in (one, p0, p1)] == [False, False, True]
    for s in range(3):
        for p in (p0, p1):
            np.testing.assert_array_equal(p[f"step{s}"], one[f"step{s}"])
            assert len(p[f"read{s}"]) == 10 * 16 // 2             # half of 10 classes x 16
        both = np.sort(np.concatenate([p0[f"read{s}"], p1[f"read{s}"]]))
        np.testing.assert_array_equal(both, one[f"read{s}"])      # together: the whole batch
        assert len(np.unique(both)) == len(both)                  # without replacement


# ------------------------------------------------------------------------------- bad starts
FAST = ["evaluate", "--config", "evaluate_digits", "--config.train.epochs=1", *Q]


def test_processes_with_different_configs_stop_naming_the_key(tmp_path):
    procs = start_cli([*FAST, f"--config.run_dir={tmp_path}"], processes=2, devices=4, ids=[0])
    procs += start_cli([*FAST, f"--config.run_dir={tmp_path}", "--config.seed=7"], processes=2,
                       devices=4, ids=[1], port=_port_of(procs[0]))
    for rc, text in wait_cli(procs, timeout=120):
        assert rc == 2, text[-2000:]
        assert "disagree on the resolved config" in text and "config.seed" in text
        assert "Traceback" not in text
    assert not os.listdir(tmp_path)        # nothing written


def _port_of(proc):
    return int(proc.args[proc.args.index("--coordinator") + 1].rsplit(":", 1)[1])


def test_coordinator_that_never_answers_times_out_naming_it(tmp_path):
    procs = start_cli([*FAST, f"--config.run_dir={tmp_path}"], processes=2, devices=4, ids=[1],
                      env={"JAXDIFF_INIT_TIMEOUT": "5"})
    (rc, text), = wait_cli(procs, timeout=90)
    assert rc == 2, text[-2000:]
    assert "no coordinator answered at 127.0.0.1:" in text and "within 5 s" in text
    assert "Traceback" not in text


def test_process_count_disagreeing_with_the_coordinator(tmp_path):
    procs = start_cli([*FAST, f"--config.run_dir={tmp_path}"], processes=2, devices=4, ids=[0])
    procs += start_cli([*FAST, f"--config.run_dir={tmp_path}"], processes=3, devices=4, ids=[1],
                       port=_port_of(procs[0]))
    for rc, text in wait_cli(procs, timeout=90):
        assert rc == 2 and "num_processes: process 0: 2, process 1: 3" in text, text[-2000:]


def test_two_processes_with_the_same_id(tmp_path):
    env = {"JAXDIFF_INIT_TIMEOUT": "5"}
    procs = start_cli([*FAST, f"--config.run_dir={tmp_path}"], processes=2, devices=4, ids=[0],
                      env=env)
    time.sleep(1.0)                   # the first one owns the coordinator's port
    procs += start_cli([*FAST, f"--config.run_dir={tmp_path}"], processes=2, devices=4, ids=[0],
                       port=_port_of(procs[0]), env=env)
    (rc0, text0), (rc1, text1) = wait_cli(procs, timeout=90)
    assert rc1 == 2 and "is busy" in text1, text1[-2000:]
    assert rc0 != 0 and "not all processes joined the coordinator at 127.0.0.1:" in text0


def test_busy_port_is_named(tmp_path):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (rc, text), = wait_cli(start_cli([*FAST, f"--config.run_dir={tmp_path}"], processes=2,
                                         devices=4, ids=[0], port=port), timeout=60)
    assert rc == 2 and f"port {port} is busy" in text and "Traceback" not in text, text[-2000:]


@pytest.mark.parametrize("flags, words", [
    (["--num-processes", "2"], "missing: --coordinator HOST:PORT, --process-id I"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"],
     "--process-id 2 must be in [0, 2)"),
    (["--coordinator", "nohostport", "--num-processes", "2", "--process-id", "0"],
     "must be HOST:PORT"),
])
def test_incomplete_start_flags_are_user_errors(tmp_path, flags, words):
    (rc, text), = wait_cli(start_cli([*FAST, f"--config.run_dir={tmp_path}", *flags],
                                     processes=1, devices=1), timeout=60)
    assert rc == 2 and words in text and "Traceback" not in text, text[-2000:]
