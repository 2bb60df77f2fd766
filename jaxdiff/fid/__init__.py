"""jaxdiff.fid: Fréchet Inception Distance as the papers compute it, without PyTorch.

* `inception`: the FID Inception-v3 (TF 2015-12-05 weights as distributed by pytorch-fid) in Flax
  NNX, read from `pt_inception-2015-12-05-6726825d.pth` by `jaxdiff.torch_reader`; `load`,
  `preprocess` (the detectors' resize to 299 and scaling), `to_pixels` (EDM's uint8
  quantisation of [-1, 1] samples), `FIDNetwork.apply`;
* `frechet`: `fid_from_statistics` in float64 (symmetric eigh root, or pytorch-fid's sqrtm);
* `stats`: streaming moments on device (`InceptionStatistics`, `Moments`), EDM-format reference
  `.npz` files (`load_reference`, `save_reference`) and `dataset_statistics` of a TFDS split;
* `weights`: the weight file's name, URL and lookup (`resolve_weights_path`);
* `commands`: `jaxdiff fid-ref` and `jaxdiff fid`.

    from jaxdiff.fid import frechet, inception, stats

    net = inception.load("pt_inception-2015-12-05-6726825d.pth")
    acc = stats.InceptionStatistics(net, batch_size=64)      # resize="tf": EDM's detector
    for images in batches:                                     # [n, H, W, 3] uint8
        acc.add(images)                     # or acc.add_batch(inception.to_pixels(x_on_device))
    fid = frechet.fid_from_statistics(*acc.result(), *stats.load_reference("cifar10-32x32.npz"))
"""

# Submodules are imported by name (`from jaxdiff.fid import inception, stats`): this package
# imports nothing itself, so `jaxdiff --help` (which reads `commands`) stays free of jax.
__all__ = ["commands", "frechet", "inception", "stats", "weights"]
