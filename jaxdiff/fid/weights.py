"""Where the FID Inception weights come from (no jax import: `jaxdiff --help` reads this).

The file is pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`: the 2015-12-05 TensorFlow
Inception-v3 (`inception-2015-12-05.tgz`) converted to a PyTorch state dict, 95 MB. jaxdiff never
downloads it: the user does, once, and passes its path (or sets `$JAXDIFF_FID_WEIGHTS`).
"""

from __future__ import annotations

import os
from pathlib import Path

from jaxdiff.errors import MissingInputError

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_ENV = "JAXDIFF_FID_WEIGHTS"


def resolve_weights_path(path=None) -> Path:
    """`path`, else `$JAXDIFF_FID_WEIGHTS`; `MissingInputError` naming the file and its URL when
    neither names an existing file."""
    given = path if path is not None else os.environ.get(WEIGHTS_ENV)
    how = (f"download {FID_WEIGHTS_URL} (95 MB; the 2015-12-05 TensorFlow Inception weights as "
           f"distributed by pytorch-fid) and pass its path (--weights FILE, or set {WEIGHTS_ENV})")
    if not given:
        raise MissingInputError(f"the FID Inception weights {FID_WEIGHTS_NAME} were not given: "
                                f"{how}")
    p = Path(os.path.expanduser(os.fspath(given)))
    if not p.is_file():
        raise MissingInputError(f"FID Inception weights {p}: no such file; {how}")
    return p
