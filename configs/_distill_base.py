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
        ddif=dict(depth=0, width=0,   # 0: the reference's SIREN for (dataset, ipc)
                   w0_initial=30.0, w0=10.0, warmup_steps=5000, warmup_lr=5e-4),
    )
    c.loss = dict(name="dm", batch_real=256, dsa_strategy="auto",
                  dc=dict(outer=0, inner=0, metric="ours", lr_net=0.01, batch_train=256),  # 0 = DC table
                  # TM (dd-common.md §8): experts from `jaxdiff experts`; 0 = the table for the IPC
                  tm=dict(buffer_dir="", syn_steps=0, expert_epochs=2, max_start_epoch=0,
                          lr_lr=0.0, lr_teacher=0.01, batch_syn=0, mode="remat", min_syn_lr=1e-3),
                  # LCMat-C (loss.name=lcmat): DC loops + matching at theta and theta + eps*
                  lcmat=dict(rho=0.05, weight=0.5, perturbation="global"))
    # "auto" / lr 0: the references' values for (param, loss) — jaxdiff.distill.presets.
    # group_lr: per-parameter-group rates, e.g. "W1=1e-4,bo=1e-3" (others use lr).
    c.opt = dict(name="auto", lr=0.0, momentum=0.5, masked=True, group_lr="")
    c.model = dict(name="convnet", depth=0, width=128, norm="instancenorm")
    c.iterations = 20000
    c.eval_every = 0                 # 0: only evaluate at the end
    c.eval = dict(epochs=1000, num_runs=5, lr=0.01, batch_size=256, dsa_strategy="auto",
                  compare_random=False)
    c.log_every = 10
    c.checkpoint_every = 100
    # Stop (the last checkpoint kept, nothing written as final) when a synthetic value leaves
    # [-limit, limit] in normalised units (real data lie within about +-3); 0: never.
    c.divergence_limit = 100.0
    # DM/DC: embed (take the gradients of) the real batches this many classes at a time, so
    # the peak memory follows the chunk, not the class count (0 = auto: the fit check picks
    # the largest divisor of the class count whose step fits; all classes when that fits).
    c.class_chunk = 0
    c.seed = 0
    c.num_devices = 0                # data-parallel over this many devices (0 = all)
    c.progress = True
    c.resume = False
    c.run_dir = "runs/distill"
    return c
