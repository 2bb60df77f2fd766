"""jaxdiff.distill.params."""
