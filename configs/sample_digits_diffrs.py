"""DiffRS on the digits denoiser: Heun 18 steps with discriminator-based rejection.

Command: jaxdiff sample --config sample_digits_diffrs [--config.guidance.gamma=0.9]
Needs:   `jaxdiff train-denoiser --config train_denoiser_digits` and then
         `jaxdiff train-discriminator --config train_discriminator_digits`.
Reports algorithmic and executed NFE, discriminator calls and transition accept rates beside the
quality figures of `sample_digits`. Runtime: dominated by the discriminator (see
docs/results.md); the warm-up tables are cached in <disc_dir>/diffrs_cache.
"""

from sample_digits import get_config as base


def get_config():
    c = base()
    c.solver.name = "heun"
    c.guidance = dict(name="diffrs", disc_dir="runs/train_discriminator_digits", gamma=0.75,
                      warmup=256, warmup_batch=128, max_iter=0, clamp_zero=True, warmup_seed=0)
    c.batch_size = 64
    c.run_dir = "runs/sample_digits_diffrs"
    return c
