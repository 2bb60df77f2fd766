"""`benchmarks.evaluate_cpu`: the jaxdiff worker (a subprocess on one CPU device) reports the
accuracies `train_and_test` gives in this process (8 devices, one run each), bit for bit, with
its peak RSS; a missing PyTorch interpreter is a skipped record, not a failure."""

import argparse

import jax

from benchmarks import evaluate_cpu as bench
from jaxdiff.distill import augment as dsa
from jaxdiff.distill.evaluate import train_and_test
from jaxdiff.models.classifiers import classifier_factory


def test_worker_reports_the_protocol_accuracies(tmp_path):
    bench.prepare_data(str(tmp_path), [10], seed=0, test_size=60, synthetic=True)
    a = argparse.Namespace(runs=2, epochs=1, seed=3, width=8, test_batch=25, run_mode="auto",
                           test_size=60, repeats=1, modes=["sequential"], timeout=600, dsa="flip",
                           torch_threads=0,
                           torch_python=str(tmp_path / "no-python"))
    rec = bench.run_worker("jax", a, str(tmp_path), 10)
    x, y, tx, ty = bench._read(str(tmp_path), 10)
    ref = train_and_test(jax.random.key(3), x, y, tx, ty, num_runs=2, epochs=1, batch_size=256,
                         make_model=classifier_factory("convnet", (32, 32, 3), 10, depth=3,
                                                       width=8, norm="instancenorm"),
                         augment=dsa.per_sample_augment("flip"),
                         test_batch_size=25)
    # Sequential runs there, one run per device here: the same program per run, equal bits.
    assert rec["accuracy"] == [float(v) for v in ref.accuracy], rec
    assert rec["run_mode"] == "sequential" and rec["epochs"] == 2
    assert rec["peak_rss_mib"] > 100 and rec["wall_s"] >= rec["compile_s"] > 0
    assert bench.run_worker("torch_eager", a, str(tmp_path), 10)["skipped"].startswith("no ")


def test_side_by_side_table_ratios():
    recs = [{"impl": "jaxdiff", "n": 160, "wall_s": 100.0, "compile_s": 5.0, "accuracy": [0.3, 0.5],
             "peak_rss_mib": 1000, "load_before": [1.0]},
            {"impl": "torch_eager", "n": 160, "wall_s": 125.0, "train_s": 100, "test_s": 25,
             "accuracy": [0.4], "peak_rss_mib": 1800, "load_before": [2.0]},
            {"impl": "torch_compile", "n": 160, "wall_s": 80.0, "load_before": [1.5]}]
    row = bench.side_by_side_table(recs).splitlines()[-1]
    assert row.startswith("| 160 | 100.0 (5.0) | 125.0 (100 + 25) | 80.0 | **1.25x** | 0.80x |")
    assert "| 1000 / 1800 / - | 40.0 / 40.0 | 1.0-2.0 |" in row
