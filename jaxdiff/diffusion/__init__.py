"""jaxdiff.diffusion: pure functional diffusion primitives (EDM/VE convention, DESIGN.md §2).

Modules: `schedules` (sigma grids, VP<->VE), `denoiser` (contract, EDM preconditioning,
parameterisation adapters), `gmm` (Gaussian-mixture oracle: exact denoiser, score, log-density),
`solvers` (init/step solvers and the `lax.scan` driver), `train` (EDM loss, train step, EMA),
`quality` (MMD, sliced Wasserstein, Frechet distance).
"""

from jaxdiff.diffusion import denoiser, gmm, quality, schedules, solvers, train
from jaxdiff.diffusion import guidance, lookahead, rewards  # LiDAR + test-time baselines (issue #9)
from jaxdiff.diffusion.denoiser import (
    Denoiser,
    EDMScalings,
    edm_denoiser,
    edm_scalings,
    edm_target,
    from_epsilon,
    from_prediction,
    from_v,
    from_x0,
    to_epsilon,
    to_score,
)
from jaxdiff.diffusion.gmm import GaussianMixture, gaussian_mixture
from jaxdiff.diffusion.quality import (
    frechet_distance,
    frechet_distance_from_features,
    mmd_rbf,
    sliced_wasserstein,
)
from jaxdiff.diffusion.schedules import (
    alpha_from_sigma,
    ddpm_betas,
    ddpm_sigmas,
    ddpm_timesteps,
    karras_sigmas,
    vp_cosine_sigma,
    vp_cosine_t,
    vp_linear_sigma,
    vp_linear_t,
)
from jaxdiff.diffusion.solvers import (
    SOLVERS,
    SampleAux,
    Solver,
    ddim,
    dpmpp_2m,
    edm_stochastic,
    euler,
    get_solver,
    heun,
    prior_sample,
    sample,
)
from jaxdiff.diffusion.train import (
    TrainState,
    edm_loss,
    init_train_state,
    make_train_step,
    nnx_denoiser,
    train_loop,
)

__all__ = [
    "denoiser", "gmm", "quality", "schedules", "solvers", "train",
    "Denoiser", "EDMScalings", "edm_denoiser", "edm_scalings", "edm_target", "from_epsilon",
    "from_prediction", "from_v", "from_x0", "to_epsilon", "to_score",
    "GaussianMixture", "gaussian_mixture",
    "frechet_distance", "frechet_distance_from_features", "mmd_rbf", "sliced_wasserstein",
    "alpha_from_sigma", "ddpm_betas", "ddpm_sigmas", "ddpm_timesteps", "karras_sigmas",
    "vp_cosine_sigma", "vp_cosine_t", "vp_linear_sigma", "vp_linear_t",
    "SOLVERS", "SampleAux", "Solver", "ddim", "dpmpp_2m", "edm_stochastic", "euler",
    "get_solver", "heun", "prior_sample", "sample",
    "TrainState", "edm_loss", "init_train_state", "make_train_step", "nnx_denoiser", "train_loop",
]  # fmt: skip
