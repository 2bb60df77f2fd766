"""Budget arithmetic against the spec tables (ddif.md §3, fred.md §3) and the bad-input guards."""

import math

import jax.numpy as jnp
import pytest

from jaxdiff.distill.budget import (
    budget_per_class,
    ddif_budget,
    fred_budget,
    pixel_budget,
    siren_num_params,
)
from jaxdiff.distill.params import DDIF_PRESETS, ddif_preset, get_parameterisation

# ddif.md §3: (preset key, image shape, classes, n, m, P, B, N_pc, total, % used)
DDIF_TABLE = [
    (("cifar10", 1), (32, 32, 3), 10, 2, 3, 81, 3_072, 37, 370, 97.6),
    (("cifar10", 10), (32, 32, 3), 10, 2, 3, 81, 30_720, 379, 3_790, 99.9),
    (("cifar10", 50), (32, 32, 3), 10, 2, 3, 543, 153_600, 282, 2_820, 99.7),
    (("cifar100", 1), (32, 32, 3), 100, 2, 3, 173, 3_072, 17, 1_700, 95.7),
    (("cifar100", 10), (32, 32, 3), 100, 2, 3, 333, 30_720, 92, 9_200, 99.7),
    (("cifar100", 50), (32, 32, 3), 100, 2, 3, 1_113, 153_600, 138, 13_800, 100.0),
    (("imagenet_subset_128", 1), (128, 128, 3), 10, 2, 3, 963, 49_152, 51, 510, 99.9),
    (("imagenet_subset_128", 10), (128, 128, 3), 10, 2, 3, 963, 491_520, 510, 5_100, 99.9),
    (("imagenet_subset_128", 50), (128, 128, 3), 10, 2, 3, 3_523, 2_457_600, 697, 6_970, 99.9),
    (("imagenet_subset_256", 1), (256, 256, 3), 10, 2, 3, 3_523, 196_608, 55, 550, 98.6),
    (("voxel32", 1), (32, 32, 32, 1), 10, 3, 1, 941, 32_768, 34, 340, 97.6),  # ModelNet10
    (("voxel32", 1), (32, 32, 32, 1), 16, 3, 1, 941, 32_768, 34, 544, 97.6),  # ShapeNet16
    (("miniucf101", 1), (16, 112, 112, 3), 50, 3, 3, 8_483, 602_112, 1, 50, 1.4),  # dipc = 1
]


@pytest.mark.parametrize("row", DDIF_TABLE, ids=lambda r: f"{r[0][0]}-ipc{r[0][1]}-C{r[2]}")
def test_ddif_table(row):
    (dataset, ipc), shape, classes, n, m, p, b, n_pc, total, used = row
    cfg = ddif_preset(dataset, ipc)
    assert siren_num_params(n, cfg.depth, cfg.width, m) == p
    rep = ddif_budget(
        ipc, shape, classes, depth=cfg.depth, width=cfg.width,
        instances_per_class=cfg.instances_per_class,
    )
    assert (rep.floats_per_instance, rep.budget_per_class) == (p, b)
    assert (rep.instances_per_class, rep.total_instances) == (n_pc, total)
    assert round(100 * rep.fraction_used, 1) == used
    assert rep.forced == (cfg.instances_per_class is not None)
    # the same numbers through the parameterisation's plan (what init calls first)
    param = get_parameterisation(
        "ddif", ipc=ipc, depth=cfg.depth, width=cfg.width, w0_initial=cfg.w0_initial, w0=cfg.w0,
        instances_per_class=cfg.instances_per_class,
    )
    assert param.plan(shape, classes) == rep


def test_ddif_presets_cover_the_table_and_w0():
    assert {r[0] for r in DDIF_TABLE} == set(DDIF_PRESETS)
    assert ddif_preset("cifar10", 1)[2:4] == (30.0, 10.0)
    assert ddif_preset("imagenet_subset_128", 50)[2:4] == (30.0, 40.0)
    assert ddif_preset("miniucf101", 1)[2:4] == (5.0, 5.0)
    with pytest.raises(ValueError, match="no DDiF preset for 'svhn'.*cifar10/IPC1"):
        ddif_preset("svhn", 1)


def test_issue_numbers():
    """The figures quoted in the issue, spelled out."""
    c10 = (32, 32, 3)
    r1 = ddif_budget(1, c10, 10, depth=2, width=6)
    assert (r1.floats_per_instance, r1.instances_per_class) == (81, 37)
    assert ddif_budget(10, c10, 10, depth=2, width=6).instances_per_class == 379
    r50 = ddif_budget(50, c10, 10, depth=2, width=20)
    assert (r50.floats_per_instance, r50.instances_per_class) == (543, 282)
    fr = fred_budget(1, c10, 10, 64)
    assert (fr.budget_per_class, fr.floats_per_instance, fr.instances_per_class) == (3072, 192, 16)
    px = pixel_budget(1, c10, 10)
    assert (px.budget_per_class, px.floats_per_instance, px.instances_per_class) == (3072, 3072, 1)


# fred.md §3: (spatial shape, K, {ipc: N_pc}), all with 3 channels except 3D-MNIST.
FRED_TABLE = [
    ((32, 32), 16, {1: 64, 2: 128, 10: 640, 50: 3200}),
    ((32, 32), 32, {1: 32, 2: 64, 10: 320, 50: 1600}),
    ((32, 32), 64, {1: 16, 2: 32, 10: 160, 50: 800}),
    ((32, 32), 128, {1: 8, 2: 16, 10: 80, 50: 400}),
    ((32, 32), 256, {1: 4, 2: 8, 10: 40, 50: 200}),
    ((64, 64), 256, {1: 16, 2: 32, 10: 160, 50: 800}),
    ((128, 128), 2048, {1: 8, 2: 16, 10: 80, 50: 400}),
]


@pytest.mark.parametrize("spatial,k,expected", FRED_TABLE)
@pytest.mark.parametrize("channels", [3, 1])
def test_fred_table(spatial, k, expected, channels):
    shape = (*spatial, channels)
    for ipc, n_pc in expected.items():
        rep = fred_budget(ipc, shape, 10, k)
        # C cancels: N_pc = floor(ipc * H * W / K)
        assert rep.instances_per_class == n_pc
        assert rep.floats_per_instance == channels * k
        assert rep.budget_per_class == ipc * math.prod(shape)


def test_fred_3d_mnist_row():
    rep = fred_budget(1, (16, 16, 16, 1), 10, 512)
    assert (rep.instances_per_class, rep.floats_per_instance) == (8, 512)
    assert rep.fraction_used == 1.0


def test_pixel_budget_is_ipc():
    for ipc in (1, 10, 50):
        rep = pixel_budget(ipc, (28, 28, 1), 10)
        assert rep.instances_per_class == ipc
        assert rep.total_floats == ipc * 10 * 784
    assert budget_per_class(1, (32, 32, 3)) == 3072


def test_budget_fits_nothing_names_the_numbers():
    # ImageNet-128 IPC50 fields (3523 floats) in a CIFAR-10 IPC1 budget (3072)
    with pytest.raises(ValueError, match=r"ddif.*3523 floats per instance.*3072 floats per class"):
        ddif_budget(1, (32, 32, 3), 10, depth=3, width=40)
    with pytest.raises(ValueError, match=r"3 x 81 = 243.*budget is 192"):
        ddif_budget(1, (8, 8, 3), 10, depth=2, width=6, instances_per_class=3)
    with pytest.raises(ValueError, match="cannot select k=1025 .* 32x32 image"):
        fred_budget(1, (32, 32, 3), 10, 1025)


def test_init_fails_on_budget_before_any_work():
    """The budget check comes first: with too few real images *and* a budget that fits nothing,
    the error is the budget's, and nothing is computed."""
    real = jnp.zeros((2, 1, 32, 32, 3))
    param = get_parameterisation("ddif", ipc=1, depth=3, width=40, warmup_steps=5000)
    with pytest.raises(ValueError, match="budget too small: ddif"):
        param.init(None, real)  # a None key would fail at the first random draw
    with pytest.raises(ValueError, match="cannot select k=2000"):
        get_parameterisation("fred", ipc=1, k=2000).init(None, real)


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(ipc=0, image_shape=(32, 32, 3), num_classes=10), "ipc must be a positive integer"),
        (dict(ipc=1.5, image_shape=(32, 32, 3), num_classes=10), "ipc must be a positive integer"),
        (dict(ipc=1, image_shape=(32,), num_classes=10), "image_shape must be"),
        (dict(ipc=1, image_shape=(32, 32, 3), num_classes=0), "num_classes must be"),
    ],
)
def test_bad_budget_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        pixel_budget(**kwargs)


def test_unknown_parameterisation_and_options():
    with pytest.raises(ValueError, match="unknown parameterisation 'idc'; valid names are pixel, fred, ddif"):
        get_parameterisation("idc", ipc=1)
    with pytest.raises(ValueError, match="unknown option.*msz_per_channel.*allowed: ipc, k, dct_norm"):
        get_parameterisation("fred", ipc=1, msz_per_channel=64)
    with pytest.raises(ValueError, match="'ddif' needs option.*depth, width"):
        get_parameterisation("ddif", ipc=1)


def test_report_string_states_the_numbers():
    text = str(ddif_budget(10, (32, 32, 3), 10, depth=2, width=6))
    for piece in ("30720 floats/class", "81 floats/instance", "379 instances/class", "3790 in total", "99.9%"):
        assert piece in text
