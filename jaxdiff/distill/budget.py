"""Storage budgets of synthetic sets, counted in stored floats exactly as the papers count them.

The budget of "IPC k" is the storage of k real images per class::

    B = k * prod(image_shape)  floats per class      (CIFAR-10 IPC1: 1 * 32*32*3 = 3072)

A parameterisation spends `floats_per_instance` stored floats on each synthetic instance and
gets `instances_per_class = floor(B / floats_per_instance)` of them (ddif.md §3, fred.md §3):

=========  ===============================================  ======================================
name       floats per instance                              not charged to the budget
=========  ===============================================  ======================================
pixel      prod(image_shape) = H*W*C                        labels
fred       C*K (K retained DCT coefficients per channel)    labels, the per-class frequency mask
ddif       P = (n+1)d + (L-1)(d+1)d + (d+1)m                labels, the shared coordinate grid
           (every weight and bias of one SIREN)
=========  ===============================================  ======================================

For FreD the channel count cancels: N_pc = floor(IPC*H*W / K) (author, FreD issue #1: CIFAR-10,
IPC1, K=64 gives 3072/192 = 16). All counts are plain Python integers; nothing here touches an
array, so a configuration that fits no instance fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

__all__ = [
    "BudgetReport",
    "budget_per_class",
    "siren_num_params",
    "fit_instances",
    "pixel_budget",
    "fred_budget",
    "ddif_budget",
]


@dataclasses.dataclass(frozen=True)
class BudgetReport:
    """How a parameterisation spends the per-class storage budget.

    Attributes:
      parameterisation: "pixel", "fred" or "ddif".
      ipc: budget in images per class.
      image_shape: `(*spatial, channels)` of one real image, e.g. `(32, 32, 3)`.
      num_classes: number of classes C.
      budget_per_class: B = ipc * prod(image_shape), in floats.
      floats_per_instance: stored floats of one synthetic instance.
      instances_per_class: N_pc, synthetic instances of every class.
      forced: True when N_pc was set explicitly (DDiF's `--dipc`) instead of floor(B / P).
      detail: human-readable description of the per-instance cost (architecture, K, ...).
    """

    parameterisation: str
    ipc: int
    image_shape: tuple[int, ...]
    num_classes: int
    budget_per_class: int
    floats_per_instance: int
    instances_per_class: int
    forced: bool = False
    detail: str = ""

    @property
    def total_instances(self) -> int:
        return self.instances_per_class * self.num_classes

    @property
    def floats_per_class(self) -> int:
        """Floats actually stored per class: N_pc * floats_per_instance."""
        return self.instances_per_class * self.floats_per_instance

    @property
    def total_floats(self) -> int:
        return self.floats_per_class * self.num_classes

    @property
    def fraction_used(self) -> float:
        """floats_per_class / budget_per_class (DDiF's "budget used" column)."""
        return self.floats_per_class / self.budget_per_class

    def __str__(self) -> str:
        shape = "x".join(str(s) for s in self.image_shape)
        forced = " (forced)" if self.forced else ""
        detail = f" [{self.detail}]" if self.detail else ""
        return (
            f"{self.parameterisation}{detail}: IPC {self.ipc} of {shape} = "
            f"{self.budget_per_class} floats/class; {self.floats_per_instance} floats/instance; "
            f"{self.instances_per_class} instances/class{forced}, {self.total_instances} in total; "
            f"{100 * self.fraction_used:.1f}% of the budget used"
        )


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def _image_shape(image_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(image_shape)
    if len(shape) < 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(
            f"image_shape must be (*spatial, channels) with positive integers, got {image_shape!r}"
        )
    return shape


def budget_per_class(ipc: int, image_shape: Sequence[int]) -> int:
    """B = ipc * prod(image_shape) floats per class (the storage of `ipc` real images)."""
    return _positive_int(ipc, "ipc") * math.prod(_image_shape(image_shape))


def siren_num_params(in_dim: int, depth: int, width: int, out_dim: int) -> int:
    """Weights and biases of one SIREN with `depth` sine layers and a linear output (ddif.md §3).

    P = (n + 1) d + (L - 1)(d + 1) d + (d + 1) m, with n = in_dim, L = depth, d = width,
    m = out_dim. Examples: (2, 2, 6, 3) -> 81, (2, 3, 40, 3) -> 3523, (3, 3, 20, 1) -> 941.
    """
    n = _positive_int(in_dim, "in_dim")
    L = _positive_int(depth, "depth")
    d = _positive_int(width, "width")
    m = _positive_int(out_dim, "out_dim")
    return (n + 1) * d + (L - 1) * (d + 1) * d + (d + 1) * m


def fit_instances(name: str, budget: int, floats_per_instance: int, detail: str = "") -> int:
    """N_pc = floor(budget / floats_per_instance); ValueError naming the numbers when it is 0."""
    n = budget // floats_per_instance
    if n < 1:
        what = f"{name} ({detail})" if detail else name
        raise ValueError(
            f"budget too small: {what} needs {floats_per_instance} floats per instance, but the "
            f"budget is {budget} floats per class, so no instance fits; raise the IPC or shrink "
            f"the parameterisation"
        )
    return n


def pixel_budget(ipc: int, image_shape: Sequence[int], num_classes: int) -> BudgetReport:
    """Pixels: one instance = one image, so N_pc = ipc."""
    shape = _image_shape(image_shape)
    b = budget_per_class(ipc, shape)
    per = math.prod(shape)
    return BudgetReport(
        "pixel", ipc, shape, _positive_int(num_classes, "num_classes"), b, per,
        fit_instances("pixel", b, per),
    )


def fred_budget(ipc: int, image_shape: Sequence[int], num_classes: int, k: int) -> BudgetReport:
    """FreD: K retained DCT coefficients per channel, C*K floats per instance (fred.md §3).

    N_pc = floor(ipc * C * prod(spatial) / (C * K)) = floor(ipc * prod(spatial) / K). The mask
    (K positions per class) is not charged. K must not exceed the number of spatial positions.
    """
    shape = _image_shape(image_shape)
    k = _positive_int(k, "k (coefficients per channel)")
    positions = math.prod(shape[:-1])
    if k > positions:
        raise ValueError(
            f"fred: the mask cannot select k={k} coefficients per channel from a "
            f"{'x'.join(map(str, shape[:-1]))} image ({positions} frequency positions)"
        )
    b = budget_per_class(ipc, shape)
    per = shape[-1] * k
    detail = f"K={k} per channel"
    return BudgetReport(
        "fred", ipc, shape, _positive_int(num_classes, "num_classes"), b, per,
        fit_instances("fred", b, per, detail), detail=detail,
    )


def ddif_budget(
    ipc: int,
    image_shape: Sequence[int],
    num_classes: int,
    *,
    depth: int,
    width: int,
    instances_per_class: int | None = None,
) -> BudgetReport:
    """DDiF: one SIREN per instance; P = siren_num_params(n, L, d, m) floats (ddif.md §3).

    The input dimension n is the number of spatial axes (2 for images, 3 for video/voxels) and
    m the channel count. `instances_per_class` forces N_pc (the reference's `--dipc`, used by its
    video variant with one field per class); a forced count must still fit the budget.
    """
    shape = _image_shape(image_shape)
    p = siren_num_params(len(shape) - 1, depth, width, shape[-1])
    b = budget_per_class(ipc, shape)
    detail = f"SIREN n={len(shape) - 1} L={depth} d={width} m={shape[-1]}"
    c = _positive_int(num_classes, "num_classes")
    if instances_per_class is None:
        return BudgetReport("ddif", ipc, shape, c, b, p, fit_instances("ddif", b, p, detail),
                            detail=detail)
    n = _positive_int(instances_per_class, "instances_per_class")
    if n * p > b:
        raise ValueError(
            f"budget too small: ddif ({detail}) with {n} forced instances per class needs "
            f"{n} x {p} = {n * p} floats per class, but the budget is {b}"
        )
    return BudgetReport("ddif", ipc, shape, c, b, p, n, forced=True, detail=detail)
