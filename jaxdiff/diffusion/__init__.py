"""jaxdiff.diffusion."""
