"""Evaluate 10 random real digits per class with the ConvNet protocol (embedded data, no download).

Command: jaxdiff evaluate --config evaluate_digits
Runtime here (2 CPU cores): about a minute.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.data = dict(name="digits", data_dir="", image_size=16)
    c.source = "random"          # full | random | synthetic
    c.ipc = 10
    c.synthetic_path = ""
    c.seed = 0
    c.model = dict(name="convnet", depth=0, width=128, norm="instancenorm")  # depth 0 = by image size
    c.train = dict(epochs=300, lr=0.01, batch_size=256, num_runs=5, dsa_strategy="auto",
                   eval_epochs=(), use_saved_lr=True,
                   run_mode="auto")  # auto: runs one after another on CPU, vmapped elsewhere
    c.progress = True             # a bar when stderr is a terminal
    c.resume = False
    c.run_dir = "runs/evaluate_digits"
    return c
