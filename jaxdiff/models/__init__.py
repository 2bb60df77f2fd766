"""jaxdiff.models."""
