"""jaxdiff.select: class-balanced data selection (LCMat-S and coreset baselines).

* `features`: closed-form per-sample last-layer CE gradients and diagonal Hessians.
* `greedy`: facility location (naive / lazy greedy, distance form), k-center greedy, herding,
  OMP, NNLS.
* `methods`: class-balanced methods behind `select(method, key, labels, num_classes, fraction,
  **inputs) -> Selection`.
"""

from jaxdiff.select.features import (
    ce_curvature,
    ce_residual,
    diag_hessian_coordinates,
    diag_hessian_variance,
    kron_gram,
    kron_layout,
    kron_sq_norms,
    last_layer_diag_hessian,
    last_layer_grad,
    pairwise_kron_distances,
    pairwise_l1_distances,
    reference_batch_scale,
    top_variance_coordinates,
)
from jaxdiff.select.greedy import (
    GreedyResult,
    OMPResult,
    assign_to_selected,
    facility_location_costs,
    facility_location_gains,
    herding as herding_greedy,
    k_center_greedy,
    lazy_greedy,
    naive_greedy,
    nnls_gram,
    omp,
    distance_matrix,
)
from jaxdiff.select.methods import (
    METHODS,
    Selection,
    class_budgets,
    craig,
    forgetting,
    forgetting_events,
    get_method,
    grand,
    grand_scores,
    gradmatch,
    herding,
    kcenter,
    lcmat_s,
    select,
    uniform,
)

__all__ = [
    "GreedyResult", "METHODS", "OMPResult", "Selection", "assign_to_selected", "ce_curvature",
    "ce_residual", "class_budgets", "craig", "diag_hessian_coordinates", "diag_hessian_variance",
    "distance_matrix", "facility_location_costs", "facility_location_gains", "forgetting",
    "forgetting_events", "get_method", "gradmatch", "grand", "grand_scores", "herding",
    "herding_greedy", "k_center_greedy", "kcenter", "kron_gram", "kron_layout", "kron_sq_norms",
    "last_layer_diag_hessian", "last_layer_grad", "lazy_greedy", "lcmat_s", "naive_greedy",
    "nnls_gram", "omp", "pairwise_kron_distances", "pairwise_l1_distances",
    "reference_batch_scale", "select", "top_variance_coordinates", "uniform",
]
