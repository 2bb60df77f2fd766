"""jaxdiff: diffusion test-time sampling and dataset reduction, fast on accelerators.

Layers (dependencies point downwards only; see DESIGN.md):
  cli -> pipelines -> {diffusion, distill, select} -> models -> data -> core (random, sharding,
  checkpoint, metrics, ops).
"""

__version__ = "0.1.0"
