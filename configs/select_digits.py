"""Selection table on scikit-learn digits (embedded, no download): LCMat-S and baselines.

Command: jaxdiff select --config select_digits
Runtime here (2 CPU cores shared with ~6 agents, load average 13-18): 33 min for the whole
table (3 seeds x 6 methods x 3 fractions, 108 networks); see docs/results_select.md.
A quick look: --config.seeds="(0,)" --config.eval.num_runs=1 (about a tenth of that).

Digits upsampled to 16x16 (1,438 train / 359 test images, ~144 per class). Fractions 1 %, 5 %,
10 % per class (1, 7, 14 images per class; 0.1 % would round to 0 images per class, which the
selection refuses). Selection model: ConvNet-D2 width 32 (512-d embedding, like ResNet-18's),
5 epochs. Evaluation: ConvNet-D2 width 32, 301 epochs, DSA without flips, 2 runs per seed x 3
seeds, final-epoch test accuracy.
"""

from _select_base import base_config


def get_config():
    c = base_config()
    c.run_dir = "runs/select_digits"
    return c
