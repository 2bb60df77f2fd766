"""`benchmarks.scaling` in its quick form: 1 and 2 devices in one process, and 2 processes x 1
device (`jax.distributed` over 127.0.0.1) against 1 process x 2 devices.

The rows carry the documented fields with consistent values, and every workload's first step
gives the same result (loss, parameter update, optimiser moments; DiffRS samples and counters)
in two processes as in one: the multi-process path (global mesh, `make_array_from_process_local_
data` placement, gathering) computes the same program, not merely something that runs. Then the
driver's handling of failing and hanging workers (SIGKILL: a worker blocked in a collective
ignores SIGTERM).

The workers run with `--fast-compile` (XLA:CPU backend optimisation off) and `--concurrent` (the
one-process worker beside the two processes) to keep the run short; its timings mean nothing.
"""

import json
import os
import sys
import time

import numpy as np
import pytest

from benchmarks import scaling

WORKLOADS = scaling.WORKLOADS
FIELDS = ("bench", "workload", "processes", "devices", "devices_per_process", "item",
          "items_per_step", "compile_s", "repeats", "step_ms", "step_iqr_ms", "step_min_ms",
          "items_per_s", "items_per_s_per_device", "host_ms", "host_fraction", "dispatch_ms",
          "feed_ms", "pipelined_step_ms", "step_ms_per_process", "host_ms_per_process",
          "times_ms", "checksum", "env")
CHECKSUM_KEYS = {
    "ddif_dm": {"loss", "update_sum", "update_abs_sum", "opt_sum", "opt_abs_sum"},
    "pixel_tm": {"loss", "syn_lr", "update_sum", "update_abs_sum", "opt_sum", "opt_abs_sum"},
    "eval_train": {"loss", "update_sum", "update_abs_sum", "opt_sum", "opt_abs_sum"},
    "diffrs": {"sample_sum", "sample_abs_sum", "algorithmic_nfe", "executed_nfe", "rounds",
               "restarts", "complete"},
}


def test_quick_scaling_one_vs_two_processes(tmp_path):
    """One run of the benchmark (one test: under pytest-xdist a shared fixture would run once
    per xdist worker)."""
    out = tmp_path / "rows.jsonl"
    rc = scaling.main(["--quick", "--fast-compile", "--concurrent", "--devices", "1,2",
                       "--processes", "1,2", "--timeout", "170", "--out", str(out)])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    _check_fields(rows)
    _check_weak_scaling(rows)
    _check_two_processes_equal_one(rows)


def _by(rows):
    return {(r["workload"], r["processes"], r["devices"]): r for r in rows}


def _check_fields(rows):
    got = _by(rows)
    assert sorted(got) == sorted((w, p, n) for w in WORKLOADS
                                 for p, n in ((1, 1), (1, 2), (2, 2)))
    for (w, p, n), r in got.items():
        missing = [f for f in FIELDS if f not in r]
        assert not missing, (w, p, n, missing)
        assert r["bench"] == "scaling" and r["devices_per_process"] * p == n
        assert r["repeats"] == len(r["times_ms"]) == 3
        assert len(r["step_ms_per_process"]) == len(r["host_ms_per_process"]) == p
        assert r["env"]["num_devices"] == 2  # jax.device_count(): global
        assert r["step_min_ms"] <= r["step_ms"] and r["step_iqr_ms"] >= 0
        # host time is the part of an iteration before the wait: feed + dispatch <= the step
        assert 0 < r["dispatch_ms"] <= r["host_ms"] <= r["step_ms"]
        assert r["feed_ms"] <= r["host_ms"]
        assert r["host_fraction"] == pytest.approx(r["host_ms"] / r["step_ms"], abs=1e-3)
        assert r["items_per_s_per_device"] == pytest.approx(
            r["items_per_step"] / (r["step_ms"] / 1e3) / n, rel=1e-3)
        assert r["pipelined_step_ms"] > 0 and r["compile_s"] > 0
        assert set(r["checksum"]) == CHECKSUM_KEYS[w]
        assert r["per_device_throughput_vs_1_device"] > 0


def _check_weak_scaling(rows):
    got = _by(rows)
    for w in WORKLOADS:
        one, two = got[(w, 1, 1)], got[(w, 1, 2)]
        assert two["items_per_step"] == 2 * one["items_per_step"], w
        assert got[(w, 1, 1)]["per_device_throughput_vs_1_device"] == 1.0


def _check_two_processes_equal_one(rows):
    got = _by(rows)
    for w in WORKLOADS:
        single, multi = got[(w, 1, 2)], got[(w, 2, 2)]
        equal, worst = scaling.compare_checksums(single["checksum"], multi["checksum"])
        assert equal, (w, single["checksum"], multi["checksum"], worst)
        assert multi["checksum_equal"] is True and multi["checksum_max_rel_diff"] == worst
        assert multi["single_process_step_ms"] == single["step_ms"]
        assert multi["overhead_ms"] == pytest.approx(multi["step_ms"] - single["step_ms"],
                                                     abs=2e-3)
        assert "host_overhead_ms" in multi and "overhead_pct" in multi
        # Not vacuous: the checked step did something, and the 1-device run (half the batch)
        # computed something else.
        c = multi["checksum"]
        assert got[(w, 1, 1)]["checksum"] != c
        if w == "diffrs":
            assert c["complete"] == 1
            assert c["algorithmic_nfe"] >= multi["num_samples"] * multi["base_nfe"]
        else:
            assert np.isfinite(c["loss"]) and c["update_abs_sum"] > 0 and c["opt_abs_sum"] > 0


def test_compare_checksums():
    a = {"loss": 1.0, "n": 3}
    assert scaling.compare_checksums(a, {"loss": 1.0 + 1e-7, "n": 3})[0]
    assert not scaling.compare_checksums(a, {"loss": 1.001, "n": 3})[0]
    assert not scaling.compare_checksums(a, {"loss": 1.0, "n": 4})[0]
    assert not scaling.compare_checksums(a, {"loss": 1.0})[0]
    # a signed sum that nearly cancels is compared relative to its absolute sum
    u = {"update_sum": -6.8379e-4, "update_abs_sum": 54.6}
    equal, worst = scaling.compare_checksums(u, {**u, "update_sum": -6.8381e-4})
    assert equal and worst == pytest.approx(2e-8 / 54.6, rel=1e-3)
    assert not scaling.compare_checksums(u, {**u, "update_sum": 1e-2})[0]


def test_merge_rounds_takes_medians_and_checks_the_checksums():
    def row(step, host, p=1, loss=1.0):
        return {"workload": "w", "processes": p, "devices": 2, "items_per_step": 10,
                "step_ms": step, "step_iqr_ms": 0.1, "step_min_ms": step - 1, "host_ms": host,
                "dispatch_ms": host, "feed_ms": 0.0, "pipelined_step_ms": step,
                "compile_s": 1.0, "step_ms_per_process": [step] * p,
                "host_ms_per_process": [host] * p, "times_ms": [step], "checksum": {"loss": loss},
                "env": {"loadavg": [1.0, 1.0, 1.0]}}

    merged = scaling.merge_rounds([[row(10.0, 1.0)], [row(30.0, 3.0)], [row(20.0, 9.0)]])
    (m,) = merged
    assert m["step_ms"] == 20.0 and m["host_ms"] == 3.0 and m["step_min_ms"] == 9.0
    assert m["round_step_ms"] == [10.0, 30.0, 20.0] and m["rounds"] == 3
    assert m["items_per_s_per_device"] == pytest.approx(10 / 0.020 / 2)
    assert m["host_fraction"] == pytest.approx(3.0 / 20.0)
    with pytest.raises(RuntimeError, match="differs between rounds"):
        scaling.merge_rounds([[row(10.0, 1.0)], [row(10.0, 1.0, loss=2.0)]])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_failing_worker_gets_its_hanging_peer_killed(tmp_path):
    """One worker fails at once; the other ignores SIGTERM and would wait forever (as one
    blocked in a collective does): the driver raises with the failure and the peer is gone."""
    pidfile = tmp_path / "pid"
    hang = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            f"open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(600)")
    fail = "import sys, time; time.sleep(1.5); print('boom', file=sys.stderr); sys.exit(3)"
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with status") as err:
        scaling.run_workers([([sys.executable, "-c", hang], dict(os.environ)),
                             ([sys.executable, "-c", fail], dict(os.environ))], timeout_s=60)
    assert time.monotonic() - t0 < 30
    assert "boom" in str(err.value)
    assert not _alive(int(pidfile.read_text()))


def test_a_hanging_worker_is_killed_at_the_timeout(tmp_path):
    pidfile = tmp_path / "pid"
    hang = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            f"open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(600)")
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="timeout"):
        scaling.run_workers([([sys.executable, "-c", hang], dict(os.environ))], timeout_s=4)
    assert time.monotonic() - t0 < 30
    assert not _alive(int(pidfile.read_text()))
