"""LiDAR reward guidance on the digits denoiser: steer unconditional samples towards one class.

Command: jaxdiff sample --config lidar_digits [--config.guidance.reward.target=7]
         baselines on the same preset: --config.guidance.name=gradient (scale/lam/window apply),
         =best_of_n (group_size), =svdd (num_candidates), =fk (num_particles, lam, potential)
Needs:   `jaxdiff train-denoiser --config train_denoiser_digits` (runs/train_denoiser_digits).
Runtime here (2 shared CPU cores): 256 samples, DDIM 50 steps + a 50 x 5-step lookahead (250 NFE,
once per run): 31.7 s wall / 18.0 s CPU incl. compiles and the quality figures at load average ~6
(28.8 s sampling); 224 of the 256 samples are classified as the target 3 (unguided: ~10 %).
Benchmarks against the baselines: benchmarks/lidar_digits.py, docs/results_diffusion.md.

Reward `class_logprob`: log p(y = target | x) of the digits quality network (the one the quality
figures use; both work on model-space images in [-1, 1]). With lam = 1 the reward-tilted target
p(x) p(y | x) is exactly the class-conditional p(x | y), so `classifier_accuracy`-like figures are
meaningful. Lookahead: n = 50 samples by DPM-Solver++(2M) in delta = 5 steps, drawn once per run
and shared by all particles (the reference's README setting); main solver DDIM with eta = 1
(the reference's), guidance over the whole sigma range; scale 4 (the reference uses 12.5 with
lam = 5000 on ImageReward; tuned here by benchmarks/lidar_digits.py).
"""

from sample_digits import get_config as base


def get_config():
    c = base()
    c.solver.name = "ddim"
    c.solver.eta = 1.0
    c.solver.steps = 50
    c.guidance = dict(
        name="lidar",
        # LiDAR
        num_lookahead=50, lookahead_steps=5, lookahead_solver="dpmpp_2m", lookahead_rho=7.0,
        subset=0, subset_mode="random",
        # LiDAR and gradient guidance
        lam=1.0, scale=4.0, window=(0.0, 1e9),
        # baselines
        group_size=4, num_candidates=4, temperature=0.0, num_particles=4, potential="diff",
        resample="all", ess_threshold=0.5,
        reward=dict(name="class_logprob", target=3, clip=True, threshold=0.0,
                    quality=dict(seed=0, width=32, feature_dim=64, epochs=20, batch_size=128,
                                 lr=1e-3)),
    )
    c.batch_size = 128
    c.num_samples = 256
    c.run_dir = "runs/lidar_digits"
    return c
