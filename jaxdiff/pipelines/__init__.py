"""jaxdiff.pipelines."""
