"""The validation image panel that W&B and TensorBoard show (unet.callbacks)."""

import numpy as np

from unet.callbacks import validation_panel


def test_validation_panel_shows_the_four_maps_at_the_output_size():
    image = np.arange(100, dtype=np.float32).reshape(10, 10)
    target = np.zeros((10, 10), np.int64)
    target[:, 5:] = 1
    target[0, 0] = -1
    weight = np.ones((10, 10), np.float32)
    prob = np.full((6, 6), 0.25, np.float32)  # valid convolutions: smaller output
    panel = validation_panel(image, target, prob, weight)
    assert panel.shape == (6, 4 * 6 + 3 * 4) and panel.dtype == np.uint8
    assert (panel[:, 6 + 4 : 6 + 4 + 3] == 0).all() and (panel[:, 6 + 4 + 3 : 12 + 4] == 255).all()
    assert (panel[:, 20:26] == 64).all()  # P = 0.25
    assert (panel[:, 30:] == 255).all()  # weight at its maximum
