"""Shared defaults of the `jaxdiff select` presets (a helper, not a preset: files starting with
'_' are not listed). See jaxdiff/pipelines/select.py for what each stage does."""

import ml_collections


def base_config():
    c = ml_collections.ConfigDict()
    c.data = dict(name="digits", data_dir="", image_size=16,
                  stats="")                 # "" = the dataset's own; e.g. "lcmat_cifar"
    c.seeds = (0, 1, 2)
    c.select = dict(
        methods=("uniform", "herding", "kcenter", "craig", "gradmatch", "lcmat_s"),
        fractions=(0.01, 0.05, 0.1),
        pool_per_class=0,                   # 0: the whole training split is the candidate pool
        # Per-method keyword options of jaxdiff.select.methods (keys: method names).
        options=dict(
            lcmat_s=dict(eps=0.01, num_coords=100, greedy="lazy"),  # scripts' eps/K; lazy = same picks
            craig=dict(greedy="lazy"),
            gradmatch=dict(lam=1.0),
        ),
    )
    # Selection model (lcmat.md §3 Step 0, CPU-sized): trained on the whole un-augmented split,
    # constant lr, SGD momentum 0.9 Nesterov, weight decay 5e-4.
    c.pretrain = dict(
        model=dict(name="convnet", depth=0, width=32, norm="instancenorm"),
        epochs=5, batch_size=128, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4,
        per_seed=True,                      # one selection model per seed (the reference's cache)
        seed=0,                             # the model's seed when per_seed is False
        cache_dir="",                       # "" = <run_dir>/pretrained
        checkpoint_every=200, log_every=50,
    )
    # Evaluation (dd-common.md §11.2 ConvNet protocol, CPU-sized width): E + 1 epochs, SGD 0.01
    # momentum 0.9, wd 5e-4, lr x 0.1 after epoch E//2 + 1 with momentum reset, batch 256, DSA.
    c.eval = dict(
        model=dict(name="convnet", depth=0, width=32, norm="instancenorm"),
        epochs=300, lr=0.01, batch_size=256, num_runs=2, dsa_strategy="auto",
        test_size=0,                        # 0 = the whole test split
        use_weights=False,                  # train on the methods' weights (CRAIG/GradMatch
                                            # counts); docs/results_select.md used False
    )
    # Stop (nothing final written, the last checkpoint kept) when the pre-training loss exceeds
    # this many times its first logged value; 0: never.
    c.divergence_limit = 100.0
    c.progress = True
    c.resume = False
    c.run_dir = "runs/select"
    return c
