"""Results of a selection table: rows per (method, fraction, seed) -> summary and Markdown table."""

from __future__ import annotations

import numpy as np


def summarise(rows: list[dict], methods, fractions) -> list[dict]:
    """One entry per (method, fraction) with results: mean ± std of the test accuracies over
    all seeds x evaluation runs (`accuracy_runs` of the rows), their count and the seeds."""
    out = []
    for f in fractions:
        for m in methods:
            accs = [a for r in rows if r["method"] == m and r["fraction"] == f
                    for a in r["accuracy_runs"]]
            seeds = sorted({r["seed"] for r in rows if r["method"] == m and r["fraction"] == f})
            if accs:
                out.append({"method": m, "fraction": f, "accuracy_mean": float(np.mean(accs)),
                            "accuracy_std": float(np.std(accs)), "num_accuracies": len(accs),
                            "seeds": seeds})
    return out


def results_table(summary: list[dict], methods, fractions, budgets: dict) -> str:
    """Markdown table: one row per method, one column per fraction (mean ± std, %); `budgets`
    maps a fraction to its per-class budgets `[C]` (the header states the total)."""
    head = "| method | " + " | ".join(
        f"{100 * f:g} % ({int(budgets[f].sum())} imgs)" for f in fractions) + " |"
    lines = [head, "|---" * (len(fractions) + 1) + "|"]
    for m in methods:
        cells = []
        for f in fractions:
            s = next((s for s in summary if s["method"] == m and s["fraction"] == f), None)
            cells.append("–" if s is None else
                         f"{100 * s['accuracy_mean']:.2f} ± {100 * s['accuracy_std']:.2f} "
                         f"(n={s['num_accuracies']})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
