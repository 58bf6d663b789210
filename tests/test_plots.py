"""`diffax.training.plots`: the figure helpers the run layer and the experiments share."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from diffax.training import plots


def test_image_grid_places_every_image_and_the_padding():
    """Six 4x4 images in 3 columns with 1-pixel padding between them: a (2*5-1) x (3*5-1) grid; image k
    sits at its row/column offset, unchanged up to the uint8 quantisation of [-1, 1] (half a level)."""
    x = np.linspace(-1, 1, 6 * 16).reshape(6, 4, 4, 1)
    g = plots.image_grid(x, ncols=3)
    assert g.shape[:2] == (2 * 5 - 1, 3 * 5 - 1)
    for k in range(6):
        r, c = divmod(k, 3)
        tile = g[5 * r : 5 * r + 4, 5 * c : 5 * c + 4, 0].astype(np.float64)
        np.testing.assert_allclose(tile / 127.5 - 1, x[k, :, :, 0], atol=1 / 255 + 1e-9)


def test_save_image_panels_writes_a_picture_and_checks_its_labels(tmp_path):
    x = np.linspace(-1, 1, 6 * 28 * 28).reshape(6, 28, 28, 1)
    plots.save_image_panels(tmp_path / "p.png", [x, x], ["a", "b"], ncols=3, row_labels=["r0", "r1"], title="t")
    img = plt.imread(tmp_path / "p.png")
    assert img.ndim == 3 and img.shape[0] > 28 and img.shape[1] > 2 * 28 * 3
    with pytest.raises(ValueError, match="row_labels"):
        plots.save_image_panels(tmp_path / "q.png", [x], ncols=3, row_labels=["r0"])
    with pytest.raises(ValueError, match="titles"):
        plots.save_image_panels(tmp_path / "q.png", [x, x], ["a"])
