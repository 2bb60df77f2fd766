"""Config -> frozen, typed spec: one module per command (`resolve(config) -> <Command>Spec`).

This is the only layer that reads a config (`ml_collections.ConfigDict`): it fills every
"auto"/0 sentinel from the method tables, derives what depends on the dataset, checks every
value, and records what it did (`spec.resolution`, printed as one block and written to the run's
`config.json`). Pipelines take the spec; library layers take explicit arguments.
"""
