"""The parameterisations by name: `get_parameterisation("ddif", ipc=1, **options)`.

Kept apart from `base` (which the concrete modules import) so imports point one way:
registry -> pixel / frequency / neural_field -> base.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from jaxdiff.distill.params.base import Parameterisation
from jaxdiff.distill.params.frequency import make_fred
from jaxdiff.distill.params.neural_field import PARAM_NAMES as SIREN_GROUPS, make_ddif
from jaxdiff.distill.params.pixel import make_pixel

FACTORIES: dict[str, Callable[..., Parameterisation]] = {
    "pixel": make_pixel, "fred": make_fred, "ddif": make_ddif}
PARAMETERISATIONS = tuple(FACTORIES)
# The keys of each parameterisation's `params` dict: the groups an optimiser may give their own
# learning rate (`opt.group_lr`).
PARAM_GROUPS: dict[str, tuple[str, ...]] = {
    "pixel": ("images",), "fred": ("coefficients",), "ddif": SIREN_GROUPS}


def get_parameterisation(name: str, **options: Any) -> Parameterisation:
    """Build a parameterisation by name ("pixel", "fred", "ddif") with its keyword options.

    Unknown names and unknown or missing options raise ValueError listing what is allowed.
    """
    if name not in FACTORIES:
        raise ValueError(
            f"unknown parameterisation {name!r}; valid names are {', '.join(PARAMETERISATIONS)}")
    factory = FACTORIES[name]
    sig = inspect.signature(factory)
    allowed = list(sig.parameters)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for parameterisation {name!r}; "
                         f"allowed: {', '.join(allowed)}")
    missing = [p for p, v in sig.parameters.items()
               if v.default is inspect.Parameter.empty and p not in options]
    if missing:
        raise ValueError(f"parameterisation {name!r} needs option(s) {', '.join(missing)}")
    return factory(**options)
