"""CIFAR-10 IPC 1 with trajectory matching, CPU-sized: the docs/results.md TM comparison of
random real / pixel / FreD / DDiF with the same experts, iterations and evaluation.

Commands (experts once, then one run per parameterisation; random real images are evaluated by
each run as well):
    jaxdiff experts --config experts_cifar10 --config.num_experts=2 --config.parallel=2 \
        --config.epochs=4 --config.buffer_dir=runs/experts_cifar10_cpu
    jaxdiff distill --config distill_cifar10_tm_cpu --config.param.name=pixel
    jaxdiff distill --config distill_cifar10_tm_cpu --config.param.name=fred
    jaxdiff distill --config distill_cifar10_tm_cpu --config.param.name=ddif
Sizes (the references' in brackets): 2 experts x 4 epochs without ZCA [100 x 50, ZCA for MTT];
max_start_epoch 2 [5], expert_epochs 2 [2], syn_steps 20 [50], 200 iterations [5,000-15,000];
remat unroll; FreD and DDiF decode and train on 10 instances per student step (batch_syn 10:
the same student work per iteration as pixel's 10 images; 200 of FreD's 160 / DDiF's 370
instances per iteration) [all instances]; DDiF warm-up 1,000 steps [5,000]; evaluation 3 runs x
101 epochs [5 x 1,001] with the learned step size. lr_lr 1e-7 and lr_teacher 0.01 for all three
(FreD's CIFAR-10 IPC 1 values; DDiF's own table has lr_lr 1e-5), set here so the three rows share
them; learning rates and optimisers are the references' (jaxdiff.distill.presets). Runtime here
(2 CPU cores, load 2-7): pixel 11 min, FreD 16 min, DDiF 59 min (docs/results.md §4).
"""

from distill_cifar10_cpu import get_config as cpu_config


def get_config():
    c = cpu_config()
    c.loss.name = "tm"
    c.loss.tm.buffer_dir = "runs/experts_cifar10_cpu"
    c.loss.tm.syn_steps = 20
    c.loss.tm.expert_epochs = 2
    c.loss.tm.max_start_epoch = 2
    c.loss.tm.lr_lr = 1e-7
    c.loss.tm.lr_teacher = 0.01
    c.loss.tm.batch_syn = 10
    c.loss.tm.mode = "remat"
    c.run_dir = "runs/distill_cifar10_tm_cpu"
    return c
