"""Synthetic-set parameterisations: pixel, FreD (DCT coefficients), DDiF (neural fields).

Each is a `Parameterisation` of pure functions (`plan`, `init`, `decode`, `labels`,
`storage_floats`) over dicts of arrays with a leading instance axis; see `base`.
"""

from jaxdiff.distill.params.base import (
    Parameterisation,
    class_sorted_labels,
    select_real_images,
    take_instances,
)
from jaxdiff.distill.params.frequency import (
    coefficient_scale,
    make_fred,
    ortho_learning_rates,
    select_frequencies,
)
from jaxdiff.distill.params.neural_field import (
    DDIF_PRESETS,
    SirenConfig,
    WarmupResult,
    coordinate_grid,
    make_ddif,
    ddif_preset,
    fit_fields,
    init_siren,
    siren_apply,
    siren_init_bounds,
    with_grid,
)
from jaxdiff.distill.params.pixel import make_pixel
from jaxdiff.distill.params.registry import (
    PARAM_GROUPS,
    PARAMETERISATIONS,
    get_parameterisation,
)

__all__ = [
    "PARAMETERISATIONS",
    "PARAM_GROUPS",
    "Parameterisation",
    "get_parameterisation",
    "select_real_images",
    "class_sorted_labels",
    "take_instances",
    "make_pixel",
    "make_fred",
    "select_frequencies",
    "coefficient_scale",
    "ortho_learning_rates",
    "make_ddif",
    "DDIF_PRESETS",
    "SirenConfig",
    "ddif_preset",
    "coordinate_grid",
    "siren_init_bounds",
    "init_siren",
    "siren_apply",
    "fit_fields",
    "WarmupResult",
    "with_grid",
]
