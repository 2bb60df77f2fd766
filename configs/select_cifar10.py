"""Selection table on CIFAR-10 (prepared `cifar10_jpeg`) with a CPU-sized protocol.

Command: jaxdiff select --config select_cifar10
Runtime here (2 CPU cores shared with ~6 agents, load average 5-17): about 61 min for the whole
table (3 seeds: pre-training 2-5 min per seed; 54 selections, 54 networks); see
docs/results_select.md. Interrupted? Re-run the same command with --resume.

CPU-sized protocol (NOT the paper's; lcmat.md §9 uses ResNet-18, 200 epochs, best epoch):
* pool: the whole 50,000-image training split, LCMat/DeepCore normalisation ("lcmat_cifar");
* selection model: ConvNet-D3 width 32 (instance norm; 512-d embedding, the size of ResNet-18's)
  trained 2 epochs on the un-augmented split, SGD 0.01 momentum 0.9 Nesterov, wd 5e-4,
  batch 128; one model per seed, cached under <run_dir>/pretrained;
* fractions 0.1 %, 0.5 %, 1 % per class (5, 25, 50 images per class; 50, 250, 500 in all);
* evaluation: ConvNet-D3 width 32, dd-common.md §11.2 schedule with E = 100 (101 epochs),
  SGD 0.01, batch 256, DSA (color, crop, cutout, flip, scale, rotate), 1 run per seed,
  tested on the whole 10,000-image test split, final-epoch accuracy; 3 seeds.
For the DC protocol proper use --config.eval.epochs=300 --config.eval.model.width=128.
"""

from _select_base import base_config


def get_config():
    c = base_config()
    c.data = dict(name="cifar10_jpeg", data_dir="", image_size=0, stats="lcmat_cifar")
    c.select.fractions = (0.001, 0.005, 0.01)
    c.pretrain.model = dict(name="convnet", depth=3, width=32, norm="instancenorm")
    c.pretrain.epochs = 2
    c.pretrain.checkpoint_every = 100
    c.eval.model = dict(name="convnet", depth=3, width=32, norm="instancenorm")
    c.eval.epochs = 100
    c.eval.num_runs = 1
    c.run_dir = "runs/select_cifar10"
    return c
