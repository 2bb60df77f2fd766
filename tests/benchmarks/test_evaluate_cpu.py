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
