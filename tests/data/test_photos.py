"""Photo datasets (`jaxdiff.data.photos`, `records`, `tiny_imagenet`, `tfds_writer`) on synthetic
prepared TFDS directories: ImageNet subsets from a fake `imagenet2012` (labels in the references'
order, the transform against an independent numpy computation and torchvision's recorded
output), ImageNette from a fake TFDS `imagenette`, Tiny-ImageNet built by the prepare command
from a fake official zip, CIFAR-100 with each reference's statistics; decoded once (decodes
counted), missing classes named, undecodable photos counted and skipped."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from jaxdiff import data
from jaxdiff.data import photos, records
from jaxdiff.data import synthetic
from jaxdiff.data.imagenet import SUBSETS
from jaxdiff.data.tiny_imagenet import main as prepare_main
from jaxdiff.data.transforms import resize_crop, resize_crop_float
from jaxdiff.errors import MissingInputError


FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "imagenet_transform" / "transform.npz"
DISTRACTORS = {"n01443537": (3, 1), "n01484850": (2, 1)}   # goldfish, great white shark
CORRUPT = f"{SUBSETS['imagenette'].wnids[3]}_1.JPEG"   # a truncated JPEG


def reference_transform(photo: np.ndarray, res: int) -> np.ndarray:
    """The references' Resize((res, res)) on the photo, written independently of jaxdiff: per
    axis, linear interpolation (np.interp, which clamps at the edges) at the source
    coordinates (o + 0.5) * in / out - 0.5 clamped at 0 — PyTorch's bilinear without
    antialiasing — in float64, not rounded."""
    x = photo.astype(np.float64)
    for axis in (0, 1):
        n = x.shape[axis]
        src = np.maximum((np.arange(res) + 0.5) * n / res - 0.5, 0.0)
        x = np.apply_along_axis(lambda v: np.interp(src, np.arange(n), v), axis, x)
    return x


def assert_rounded(images: np.ndarray, reference: np.ndarray) -> None:
    """uint8 `images` are `reference` rounded to the nearest integer (ties either way: jaxdiff
    computes in float32)."""
    assert images.dtype == np.uint8 and images.shape == reference.shape
    assert np.abs(images - reference).max() <= 0.5 + 1e-3


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """A fake imagenet2012 holding ImageNette's and ImageWoof's classes (4 train / 2
    validation photos each, ImageWoof's first class 1 / 1), two distractor classes and one
    truncated JPEG."""
    root = tmp_path_factory.mktemp("inet")
    counts = {w: (4, 2) for w in SUBSETS["imagenette"].wnids + SUBSETS["imagewoof"].wnids}
    counts[SUBSETS["imagewoof"].wnids[0]] = (1, 1)
    counts.update(DISTRACTORS)
    written = synthetic.write_imagenet2012(root, counts, corrupt=[CORRUPT], size_range=(20, 60))
    return root, written


def expected(written, split: str, subset: str, res: int):
    """(images, labels, rows) the loader should return: the subset's rows in record order."""
    wnids = SUBSETS[subset].wnids
    keep = [(row, wnids.index(w), p) for row, w, p, _ in written[split]
            if w in wnids and p is not None]
    return (np.stack([reference_transform(p, res) for _, _, p in keep]),
            np.array([lab for _, lab, _ in keep], np.int32), np.array([r for r, _, _ in keep]))


@pytest.mark.parametrize("subset", ["imagenette", "imagewoof"])
def test_subset_labels_order_and_transform(imagenet, subset):
    root, written = imagenet
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train = data.load(subset, "train", data_dir=root, image_size=24)
    images, labels, rows = expected(written, "train", subset, 24)
    got = photos.load_photos(subset, data.registry.entry(subset), "train", root, res=24)
    assert np.array_equal(got["rows"], rows)                 # record order, distractors left out
    assert np.array_equal(train.labels, labels)              # position in the references' list
    assert_rounded(train.images, images)                     # decode -> squash -> round
    assert train.info.class_names == SUBSETS[subset].names and train.info.num_classes == 10
    assert train.info.image_shape == (24, 24, 3) and train.info.mean == (0.485, 0.456, 0.406)
    test = data.load(subset, "test", data_dir=root, image_size=24)
    t_images, t_labels, _ = expected(written, "validation", subset, 24)
    assert np.array_equal(test.labels, t_labels)
    assert_rounded(test.images, t_images)
    counts = data.train_class_counts(subset, root)            # from the label index, no decode
    assert counts == tuple(np.bincount(
        [SUBSETS[subset].wnids.index(w) for _, w, _, _ in written["train"]
         if w in SUBSETS[subset].wnids], minlength=10).tolist())


def test_transform_matches_torchvision():
    """The recorded torchvision output (tests/fixtures/imagenet_transform): jaxdiff's float
    transform within 1e-5 in normalised units, the cached uint8 within the rounding."""
    z = np.load(FIXTURE)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    for i, (h, w, res) in enumerate(z["cases"]):
        for fit, key in (("squash", "squash"), ("short_side_crop", "short")):
            if f"{key}{i}" not in z:
                continue
            want = z[f"{key}{i}"]
            got = (resize_crop_float(z[f"photo{i}"], int(res), fit=fit) / 255.0 - mean) / std
            assert np.abs(got - want).max() < 1e-5, (i, fit)
            cached = (resize_crop(z[f"photo{i}"], int(res), fit=fit) / 255.0 - mean) / std
            assert np.abs(cached - want).max() <= 0.5 / 255 / std.min() + 1e-6


def test_decoded_once_then_cached(imagenet, monkeypatch):
    root, _ = imagenet
    calls = {"decode": 0, "read": 0}
    decode, read = records.decode_image, records._read

    def counting_decode(b):
        calls["decode"] += 1
        return decode(b)

    def counting_read(rs, rows):
        calls["read"] += 1
        return read(rs, rows)

    monkeypatch.setattr(records, "decode_image", counting_decode)
    monkeypatch.setattr(records, "_read", counting_read)
    with pytest.warns(UserWarning, match="could not be decoded"):
        first = data.load("imagenette", "train", data_dir=root, image_size=16)
    n = calls["decode"]
    assert n == first.info.num_examples + first.info.undecodable == 40
    for mmap in (False, True):
        again = data.load("imagenette", "train", data_dir=root, image_size=16, mmap=mmap)
        assert np.array_equal(again.images, first.images)
    data.train_class_counts("imagenette", root)
    assert calls["decode"] == n          # never decoded again
    reads = calls["read"]
    data.load("imagenette", "train", data_dir=root, image_size=16)
    assert calls["read"] == reads        # nor read: the cache answers without the source
    with pytest.warns(UserWarning, match="could not be decoded"):
        data.load("imagenette", "train", data_dir=root, image_size=20)
    assert calls["decode"] == 2 * n      # another resolution is another entry


def test_undecodable_photo_counted_and_skipped(imagenet):
    root, written = imagenet
    row = next(r for r, _, _, name in written["train"] if name == CORRUPT)
    with pytest.warns(UserWarning, match=f"1 of 40 images .* skipped: {CORRUPT}"):
        ds = data.load("imagenette", "train", data_dir=root, image_size=12, cache=False)
    assert ds.info.undecodable == 1 and ds.info.num_examples == 39 == len(ds.labels)
    with pytest.warns(UserWarning, match=CORRUPT):
        got = photos.load_photos("imagenette", data.registry.entry("imagenette"), "train", root,
                                 res=12)
    assert got["undecodable"].tolist() == [row] and row not in got["rows"]


def test_missing_classes_are_named(tmp_path):
    nette = SUBSETS["imagenette"]
    counts = {w: (2, 1) for w in nette.wnids[2:]}
    counts[nette.wnids[0]] = (2, 0)          # in train, absent from validation
    synthetic.write_imagenet2012(tmp_path, counts, size_range=(20, 30))   # nette.wnids[1]: nowhere
    with pytest.raises(photos.MissingClassesError) as e:
        data.load("imagenette", "train", data_dir=tmp_path)
    msg = str(e.value)
    assert "1 of its 10 classes: n02102040 (english_springer)." in msg
    assert "'train'" in msg and "imagenet2012" in msg
    with pytest.raises(MissingInputError,
                       match=rf"'validation' images of 2 .*{nette.wnids[0]} \(tench\), "
                             r"n02102040 \(english_springer\)"):
        data.load("imagenette", "test", data_dir=tmp_path)
    with pytest.raises(MissingInputError, match="n02102040"):
        data.train_class_counts("imagenette", tmp_path)


def test_imagenette_from_tfds_imagenette(tmp_path):
    written = synthetic.write_imagenette(tmp_path, 2, 1)
    ds = data.load("imagenette_tfds", "train", data_dir=tmp_path, image_size=16)
    wnids = SUBSETS["imagenette"].wnids
    want = [wnids.index(w) for _, w, _, _ in written["train"]]
    assert ds.labels.tolist() == want and ds.info.class_names == SUBSETS["imagenette"].names
    assert_rounded(ds.images[0], reference_transform(written["train"][0][2], 16))
    assert data.load("imagenette_tfds", "test", data_dir=tmp_path).images.shape == (10, 128, 128, 3)


def test_missing_source_says_how_to_prepare(tmp_path):
    with pytest.raises(MissingInputError,
                       match="imagenet2012.*tfds build imagenet2012 --manual_dir"):
        data.check_available("imagewoof", tmp_path)
    with pytest.raises(MissingInputError, match=r"imagenette/full-size-v2.*imagenette/160px"):
        data.load("imagenette_tfds", data_dir=tmp_path)
    with pytest.raises(MissingInputError, match="python -m jaxdiff.data.tiny_imagenet"):
        data.train_class_counts("tiny_imagenet", tmp_path)
    with pytest.raises(ValueError, match="square"):
        data.load("imagewoof", image_size=(128, 96), data_dir=tmp_path)


def test_tiny_imagenet_prepared_from_the_official_zip(tmp_path, capsys):
    wnids = synthetic.fake_wnids(200)
    zipped = synthetic.write_tiny_zip(tmp_path / "tiny-imagenet-200.zip", wnids, 2, 1)
    assert prepare_main([str(tmp_path / "tiny-imagenet-200.zip"), "--out", str(tmp_path)]) == 0
    assert "JAXDIFF_DATA_DIR" in capsys.readouterr().out
    order = sorted(wnids)                    # ImageFolder's class order
    train = data.load("tiny_imagenet", "train", data_dir=tmp_path)
    assert train.info.class_names == tuple(order) and train.info.image_shape == (64, 64, 3)
    assert train.labels.tolist() == [c for c in range(200) for _ in range(2)]
    for i in (0, 1, 2 * order.index(wnids[0])):   # incl. the grayscale photo, now RGB
        w = order[train.labels[i]]
        assert np.array_equal(train.images[i], zipped["train"][(w, f"{w}_{i % 2}.JPEG")])
    test = data.load("tiny_imagenet", "test", data_dir=tmp_path)
    names = sorted(zipped["validation"])
    assert test.labels.tolist() == [order.index(zipped["validation"][n][0]) for n in names]
    assert np.array_equal(test.images[3], zipped["validation"][names[3]][1])
    assert data.train_class_counts("tiny_imagenet", tmp_path) == (2,) * 200
    small = data.load("tiny_imagenet", "train", data_dir=tmp_path, image_size=32)
    assert_rounded(small.images[5], reference_transform(train.images[5], 32))
    assert prepare_main([str(tmp_path / "tiny-imagenet-200.zip"), "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    import zipfile                           # the extracted folder works the same
    zipfile.ZipFile(tmp_path / "tiny-imagenet-200.zip").extractall(tmp_path / "x")
    assert prepare_main([str(tmp_path / "x" / "tiny-imagenet-200"), "--out",
                         str(tmp_path / "y")]) == 0
    again = data.load("tiny_imagenet", "test", data_dir=tmp_path / "y", cache=False)
    assert np.array_equal(again.images, test.images) and np.array_equal(again.labels, test.labels)


def test_cifar100_and_each_references_statistics(tmp_path):
    written = synthetic.write_cifar100(tmp_path, 2, 1)
    ds = data.load("cifar100", "train", data_dir=tmp_path)
    assert np.array_equal(ds.images, written["train"][0]) and np.array_equal(ds.labels,
                                                                             written["train"][1])
    # DC / FreD's DM and DC utils: CIFAR-100's own statistics; MTT, DDiF, FreD's TM: CIFAR-10's
    assert ds.info.mean == (0.5071, 0.4866, 0.4409) and ds.info.std == (0.2673, 0.2564, 0.2762)
    mtt = data.load("cifar100", "test", data_dir=tmp_path, stats="cifar10")
    assert mtt.info.mean == (0.4914, 0.4822, 0.4465) and mtt.info.std == (0.2023, 0.1994, 0.2010)
    assert data.get_info("cifar100", stats="cifar10").std == mtt.info.std
