"""Image grids and PNGs (`jaxdiff.images`)."""

import numpy as np

from jaxdiff.images import make_grid, save_grid


def test_grid_layout_and_png(tmp_path):
    imgs = np.stack([np.full((2, 3, 1), v, np.float32) for v in (0.0, 0.5, 1.0)])
    g = make_grid(imgs, ncol=2, pad=1)
    assert g.shape == (2 * 3 + 1, 2 * 4 + 1, 1)
    assert g[1, 1, 0] == 0.0 and g[1, 5, 0] == 0.5 and g[4, 1, 0] == 1.0
    assert g[0, 0, 0] == 1.0 and g[4, 5, 0] == 1.0  # padding and the empty cell are white
    from PIL import Image
    p = save_grid(tmp_path / "g.png", imgs, ncol=2, scale=2)
    assert Image.open(p).size == (2 * (2 * 4 + 1), 2 * (2 * 3 + 1))
