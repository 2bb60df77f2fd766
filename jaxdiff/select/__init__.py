"""jaxdiff.select."""
