"""The selection table (`jaxdiff.select.report`): summaries over seeds x runs, the Markdown table."""

import numpy as np

from jaxdiff.select.report import results_table, summarise


def test_summary_and_table_exact():
    rows = [{"method": "uniform", "fraction": 0.1, "seed": 0, "accuracy_runs": [0.5, 0.7]},
            {"method": "uniform", "fraction": 0.1, "seed": 1, "accuracy_runs": [0.6]},
            {"method": "lcmat_s", "fraction": 0.1, "seed": 0, "accuracy_runs": [0.9]}]
    summary = summarise(rows, ("uniform", "lcmat_s", "herding"), (0.1,))
    assert [s["method"] for s in summary] == ["uniform", "lcmat_s"]       # herding: no rows
    u = summary[0]
    assert u["num_accuracies"] == 3 and u["seeds"] == [0, 1]
    np.testing.assert_allclose([u["accuracy_mean"], u["accuracy_std"]],
                               [0.6, np.std([0.5, 0.7, 0.6])])
    table = results_table(summary, ("uniform", "lcmat_s", "herding"), (0.1,),
                          {0.1: np.array([2, 3])})
    assert table.splitlines() == [
        "| method | 10 % (5 imgs) |", "|---|---|",
        "| uniform | 60.00 ± 8.16 (n=3) |", "| lcmat_s | 90.00 ± 0.00 (n=1) |",
        "| herding | – |"]
