"""`benchmarks/train_step_cpu.py` at a tiny size: every variant runs, and all compute the same
train steps (their losses agree up to float rounding), so the timings compare like with like."""

import json

from benchmarks import train_step_cpu


def test_variants_compute_the_same_steps(capsys):
    assert train_step_cpu.main(["--batch", "4", "--steps", "2", "--train-images", "8",
                                "--repeats", "1"]) == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()
            if line.startswith("{")]
    assert [r["variant"] for r in recs] == list(train_step_cpu.VARIANTS)
    ref = recs[-1]["losses"]                                   # "before"
    assert len(ref) == 2
    for r in recs:
        assert all(abs(a - b) <= 1e-4 * max(1.0, abs(b)) for a, b in zip(r["losses"], ref)), r
        assert r["s_per_step"] > 0
    by = {r["variant"]: r for r in recs}
    assert by["library"]["compiler_options"] == {
        "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
    assert by["xla_scheduler"]["compiler_options"] == {} == by["before"]["compiler_options"]
