"""The dataset registry (`jaxdiff.data.registry`): the statistics table, shapes, classes and
split sizes, statistics overrides, unknown names."""

from __future__ import annotations


import numpy as np
import pytest

from jaxdiff import data
from jaxdiff.data.imagenet import SUBSETS


def test_stats_table_matches_dd_common():
    # dd-common.md §1.1 and lcmat.md, digit for digit.
    assert data.get_info("mnist").mean == (0.1307,) and data.get_info("mnist").std == (0.3081,)
    fm = data.get_info("fashion_mnist")
    assert (fm.mean, fm.std) == ((0.2861,), (0.3530,))
    sv = data.get_info("svhn_cropped")
    assert sv.mean == (0.4377, 0.4438, 0.4728) and sv.std == (0.1980, 0.2010, 0.1970)
    for name in ("cifar10", "cifar10_jpeg"):
        c = data.get_info(name)
        assert c.mean == (0.4914, 0.4822, 0.4465) and c.std == (0.2023, 0.1994, 0.2010)
    c100 = data.get_info("cifar100")
    assert c100.mean == (0.5071, 0.4866, 0.4409) and c100.std == (0.2673, 0.2564, 0.2762)
    assert data.STATS["lcmat_cifar"] == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def test_registry_shapes_classes_and_sizes():
    expect = {"cifar10": ((32, 32, 3), 10, 50000, 10000),
              "cifar10_jpeg": ((32, 32, 3), 10, 50000, 10000),
              "cifar100": ((32, 32, 3), 100, 50000, 10000),
              "mnist": ((28, 28, 1), 10, 60000, 10000),
              "fashion_mnist": ((28, 28, 1), 10, 60000, 10000),
              "svhn_cropped": ((32, 32, 3), 10, 73257, 26032),
              "digits": ((8, 8, 1), 10, 1438, 359),
              # photo datasets: 0 = known only from the prepared data
              **{name: ((128, 128, 3), 10, 0, 500) for name in SUBSETS},
              "imagenette_tfds": ((128, 128, 3), 10, 0, 0),
              "tiny_imagenet": ((64, 64, 3), 200, 100000, 10000)}
    assert set(data.DATASET_NAMES) == set(expect)
    for name, (shape, k, n_train, n_test) in expect.items():
        tr, te = data.get_info(name, "train"), data.get_info(name, "test")
        assert tr.image_shape == shape and tr.num_classes == k == len(tr.class_names)
        assert len(set(tr.class_names)) == k
        assert (tr.num_examples, te.num_examples) == (n_train, n_test)
        assert len(tr.mean) == len(tr.std) == shape[2]
    assert data.get_info("cifar100").class_names[:3] == ("apple", "aquarium_fish", "baby")
    assert data.get_info("cifar100").class_names[-1] == "worm"
    assert data.get_info("cifar10").class_names[0] == "airplane"
    assert data.get_info("digits", image_size=32).image_shape == (32, 32, 1)
    assert data.get_info("cifar10", image_size=(16, 24)).image_shape == (16, 24, 3)
    assert data.get_info("imagewoof").class_names == SUBSETS["imagewoof"].names
    assert data.get_info("imagesquawk", image_size=64).image_shape == (64, 64, 3)
    for name in (*SUBSETS, "imagenette_tfds", "tiny_imagenet"):   # dd-common.md §1.1
        assert data.get_info(name).stats == data.STATS["imagenet"]
    hash(data.get_info("cifar10"))  # usable as a static jit argument


def test_with_stats_overrides():
    c100 = data.get_info("cifar100")
    as_mtt = data.with_stats(c100, "cifar10")  # MTT/DDiF normalise CIFAR-100 with CIFAR-10 stats
    assert as_mtt.mean == (0.4914, 0.4822, 0.4465) and as_mtt.std == (0.2023, 0.1994, 0.2010)
    assert as_mtt.class_names == c100.class_names and as_mtt.name == "cifar100"
    lc = data.with_stats(data.get_info("cifar10"), data.STATS["lcmat_cifar"])
    assert lc.std == (0.2470, 0.2435, 0.2616)
    custom = data.with_stats(data.get_info("mnist"), (0.5, 0.25))
    assert custom.mean == (0.5,) and custom.std == (0.25,)
    with pytest.raises(ValueError, match="3 channels"):
        data.with_stats(data.get_info("cifar10"), "mnist")
    with pytest.raises(ValueError, match="lcmat_cifar"):
        data.with_stats(data.get_info("cifar10"), "no_such_stats")


def test_unknown_name_and_split():
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'.*cifar10, cifar10_jpeg"):
        data.load("cifar11")
    with pytest.raises(ValueError, match="unknown split 'validation'.*train, test"):
        data.load("digits", "validation")
    with pytest.raises(ValueError, match="image_size"):
        data.load("digits", image_size=0)


def test_train_class_counts_add_up_to_the_split():
    # (the photo datasets count their prepared data: tests/data/test_photos.py)
    for name in [n for n in data.DATASET_NAMES if data.registry.entry(n).source != "photos"]:
        counts = data.train_class_counts(name)
        info = data.get_info(name, "train")
        assert len(counts) == info.num_classes and sum(counts) == info.num_examples, name
    labels = data.load("digits", "train").labels
    assert data.train_class_counts("digits") == tuple(np.bincount(labels).tolist())


def test_imagenet_subsets_are_the_references_class_lists():
    """MTT utils.py `Config` (commit 50dccea), copied by FreD and DDiF: the class indices in
    label order, and the WordNet ids they stand for in TFDS's imagenet2012 label list."""
    import tensorflow_datasets as tfds
    from pathlib import Path
    labels = (Path(tfds.__file__).parent / "datasets" / "imagenet2012" / "labels.txt").read_text()
    labels = labels.split()
    assert SUBSETS["imagenette"].indices == (0, 217, 482, 491, 497, 566, 569, 571, 574, 701)
    assert SUBSETS["imagewoof"].indices == (193, 182, 258, 162, 155, 167, 159, 273, 207, 229)
    assert SUBSETS["imagefruit"].indices == (953, 954, 949, 950, 951, 957, 952, 945, 943, 948)
    assert SUBSETS["imageyellow"].indices == (309, 986, 954, 951, 987, 779, 599, 291, 72, 11)
    assert SUBSETS["imagemeow"].indices == (281, 282, 283, 284, 285, 291, 292, 290, 289, 287)
    assert SUBSETS["imagesquawk"].indices == (84, 130, 88, 144, 145, 22, 96, 9, 100, 89)
    for name, s in SUBSETS.items():
        assert s.wnids == tuple(labels[i] for i in s.indices), name
        assert len(s.names) == len(set(s.wnids)) == 10
    # TFDS imagenette's labels (sorted wnids) are ImageNette's, in the same order
    nette = (Path(tfds.__file__).parent / "image_classification" / "imagenette_labels.txt")
    assert tuple(nette.read_text().split()) == SUBSETS["imagenette"].wnids
