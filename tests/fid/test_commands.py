"""`jaxdiff fid-ref` and `jaxdiff fid` through the real CLI entry (`cli.main`): outputs and
refusals (exit 2, one message naming the bad value)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxdiff import cli
from jaxdiff.fid import commands, frechet, inception, stats
from jaxdiff.fid.weights import FID_WEIGHTS_URL, WEIGHTS_ENV


def run_cli(argv, capsys) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _stats_file(path, d=2048, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 2.0, d)
    np.savez(path, mu=rng.normal(size=d) + shift, sigma=np.diag(a))
    return path


def test_parser_choices_are_the_library_ones():
    assert commands.RESIZE_CHOICES == inception.RESIZE_MODES
    assert commands.METHOD_CHOICES == frechet.METHODS


@pytest.fixture
def scored(monkeypatch):
    """Record the statistics `jaxdiff fid` passes to the Fréchet distance and return a fixed
    value: the CLI wiring is tested here, the 2048-d distance itself (seconds of eigenvalue
    work) in test_frechet.py and test_stats.py."""
    calls = []

    def fake(mu1, sigma1, mu2, sigma2, *, method="eigh", eps=1e-6):
        calls.append((np.asarray(mu1), np.asarray(sigma1), np.asarray(mu2), np.asarray(sigma2),
                      method))
        return 12.3456789

    monkeypatch.setattr(frechet, "fid_from_statistics", fake)
    return calls


def test_fid_of_statistics_files(tmp_path, capsys, scored):
    a, b = _stats_file(tmp_path / "a.npz", seed=1), _stats_file(tmp_path / "b.npz", seed=2)
    code, out, _ = run_cli(["fid", "--images", str(a), "--ref", str(b), "--method", "sqrtm"],
                           capsys)
    assert code == 0
    assert out == f"FID 12.3457 (statistics {a} vs {b}; resize=tf)\n"
    (mu1, s1, mu2, s2, method), = scored
    with np.load(a) as za, np.load(b) as zb:
        for got, want in ((mu1, za["mu"]), (s1, za["sigma"]), (mu2, zb["mu"]), (s2, zb["sigma"])):
            np.testing.assert_array_equal(got, want)
    assert method == "sqrtm"


def test_fid_ref_then_fid_of_the_same_images(net, seeded_sd, tmp_path, monkeypatch, capsys,
                                              scored):
    """fid-ref on 3 digits images, then fid of those 3 images as a samples.npz: the scored
    statistics are the reference's."""
    from jaxdiff import torch_reader
    from jaxdiff.data import load

    weights = tmp_path / inception.FID_WEIGHTS_NAME
    weights.write_bytes(b"stand-in")            # exists; its reading is replaced below
    monkeypatch.setattr(torch_reader, "read_state_dict", lambda p: dict(seeded_sd))
    monkeypatch.setenv("JAXDIFF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(WEIGHTS_ENV, str(weights))
    ref = tmp_path / "refs" / "digits.npz"
    code, out, err = run_cli(["fid-ref", "--dataset", "digits", "--split", "train", "--limit",
                              "3", "--batch", "4", "--out", str(ref)], capsys)
    assert code == 0, err
    assert f"wrote {ref} (3 images; FID Inception-v3" in out
    with np.load(ref) as z:
        assert set(z.files) == {"mu", "sigma", "count", "detector", "resize", "source"}
        assert str(z["source"]) == "digits:train" and int(z["count"]) == 3
        mu_ref, sigma_ref = z["mu"], z["sigma"]
    samples = tmp_path / "samples.npz"
    np.savez(samples, images=load("digits", "train").images[:3])
    code, out, err = run_cli(["fid", "--images", str(samples), "--ref", str(ref), "--batch", "4"],
                             capsys)
    assert code == 0, err
    assert out.startswith(f"FID 12.3457 (3 images from {samples} vs {ref}; resize=tf)")
    (mu, sigma, mu2, sigma2, method), = scored
    np.testing.assert_array_equal(mu2, mu_ref)
    np.testing.assert_allclose(mu, mu_ref, rtol=1e-6)
    assert np.max(np.abs(sigma - sigma_ref)) < 1e-6 * np.max(np.abs(sigma_ref))
    assert method == "eigh"


@pytest.mark.parametrize("case", ["no_weights", "missing_ref", "dim", "images", "dataset",
                                  "out_dir", "npz_keys"])
def test_refusals(case, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    ref = _stats_file(tmp_path / "ref.npz")
    samples = tmp_path / "s.npz"
    np.savez(samples, images=np.zeros((4, 8, 8, 3), np.uint8))
    argv, expect = {
        "no_weights": (["fid", "--images", str(samples), "--ref", str(ref)],
                       [FID_WEIGHTS_URL, WEIGHTS_ENV]),
        "missing_ref": (["fid", "--images", str(samples), "--ref", str(tmp_path / "x.npz")],
                        [str(tmp_path / "x.npz"), stats.EDM_REFS_URL]),
        "dim": (["fid", "--images", str(samples), "--ref",
                 str(_stats_file(tmp_path / "r64.npz", d=64))], ["dimension 64", "have 2048"]),
        "images": (["fid", "--images", str(tmp_path / "none"), "--ref", str(ref)],
                   [str(tmp_path / "none"), "no such file or directory"]),
        "dataset": (["fid-ref", "--dataset", "cifar11", "--out", str(tmp_path / "o.npz")],
                    ["unknown dataset 'cifar11'"]),
        "out_dir": (["fid-ref", "--dataset", "digits", "--out", str(tmp_path)],
                    ["is a directory"]),
        "npz_keys": (["fid", "--images", str(_stats_file(tmp_path / "k.npz")), "--ref", str(ref),
                      "--method", "sqrtm"], None),
    }[case]
    if case == "npz_keys":   # a statistics file of another shape: the sigma check names it
        np.savez(tmp_path / "k.npz", mu=np.zeros(2048), sigma=np.eye(3))
        expect = ["sigma (3, 3)"]
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"jaxdiff {argv[0]}: ") and "Traceback" not in err
    for part in expect:
        assert part in err


def test_image_sources(tmp_path):
    """A PNG folder (recursive, sorted by relative path, gray repeated to RGB, read a chunk at a
    time) and a samples.npz holding only model-space `samples` give the expected uint8 pixels."""
    from PIL import Image

    rng = np.random.default_rng(6)
    imgs = rng.integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    names = ["b/01.png", "a/10.png", "a/02.png", "c.png", "b/00.png"]
    for name, im in zip(names, imgs):
        (tmp_path / "png" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(tmp_path / "png" / name)
    Image.fromarray(imgs[0, :, :, 0]).save(tmp_path / "png" / "d.png")   # grayscale
    kind, (batches, what) = commands.open_images(tmp_path / "png", chunk=4)
    got = list(batches)
    assert kind == "images" and what.startswith("6 image files") and len(got) == 2
    order = np.argsort(names)              # a/02, a/10, b/00, b/01, c
    np.testing.assert_array_equal(np.concatenate(got)[:5], imgs[order])
    np.testing.assert_array_equal(got[1][1], np.repeat(imgs[0, :, :, :1], 3, axis=-1))

    x = rng.uniform(-1, 1, (3, 4, 4, 3)).astype(np.float32)
    np.savez(tmp_path / "samples.npz", samples=x)
    kind, (batches, _) = commands.open_images(tmp_path / "samples.npz")
    np.testing.assert_array_equal(next(batches), np.round((x + 1) * 127.5).astype(np.uint8))


def test_parser_imports_no_jax():
    import subprocess
    import sys

    code = ("import sys; from jaxdiff import cli; cli._parser().parse_args(['fid', '--images', "
            "'a', '--ref', 'b']); print(sorted(m for m in ('jax', 'flax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
