"""CIFAR-10 (prepared `cifar10_jpeg`), 10 random real images per class, ConvNet-D3, DSA, 5 runs, 300 epochs.

Command: jaxdiff evaluate --config evaluate_cifar10
Runtime here (2 CPU cores): see docs/results.md (the acceptance run of the foundation issue).
Literature: random selection at IPC 10 gives about 26 % (dd-common.md §12).
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.data = dict(name="cifar10_jpeg", data_dir="", image_size=0)
    c.source = "random"
    c.ipc = 10
    c.synthetic_path = ""
    c.seed = 0
    c.model = dict(name="convnet", depth=3, width=128, norm="instancenorm")
    c.train = dict(epochs=300, lr=0.01, batch_size=256, num_runs=5, dsa_strategy="auto",
                   eval_epochs=(), use_saved_lr=True,
                   run_mode="auto")  # auto: runs one after another on CPU, vmapped elsewhere
    c.progress = True             # a bar when stderr is a terminal
    c.resume = False
    c.run_dir = "runs/evaluate_cifar10_ipc10"
    return c
