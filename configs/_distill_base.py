"""Shared defaults of the distillation presets (not a preset itself: files starting with '_' are
helpers). Values follow dd-common.md, ddif.md and fred.md; see each preset for its overrides."""

import ml_collections


def base_config():
    c = ml_collections.ConfigDict()
    c.data = dict(name="cifar10_jpeg", data_dir="", image_size=0)
    c.ipc = 1
    c.param = dict(
        name="ddif",
        pixel=dict(init="real"),
        fred=dict(k=64, dct_norm=None),          # the reference's unnormalised DCT
        ddif=dict(depth=2, width=6, w0_initial=30.0, w0=10.0, warmup_steps=5000, warmup_lr=5e-4),
    )
    c.loss = dict(name="dm", batch_real=256, dsa_strategy="auto",
                  dc=dict(outer=0, inner=0, metric="ours", lr_net=0.01, batch_train=256))  # 0 = DC table
    # pixel+DM: SGD(1.0, momentum 0.5); FreD: SGD(lr_freq, 0.5); DDiF: Adam(lr_nf).
    c.opt = dict(name="adam", lr=5e-5, momentum=0.5, masked=True)
    c.model = dict(name="convnet", depth=0, width=128, norm="instancenorm")
    c.iterations = 20000
    c.eval_every = 0                 # 0: only evaluate at the end
    c.eval = dict(epochs=1000, num_runs=5, lr=0.01, batch_size=256, dsa_strategy="auto",
                  compare_random=False)
    c.log_every = 10
    c.checkpoint_every = 100
    c.seed = 0
    c.progress = True
    c.resume = False
    c.run_dir = "runs/distill"
    return c
