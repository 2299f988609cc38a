"""Slow tier (python -m pytest -m slow): a real, short training on ISBI 2012."""

from __future__ import annotations

import pytest
from test_configs import compose_train

from unet.training import train

# On the 2-core development machine this test passed in 339 s: 3 epochs of isbi_cpu
# (300 tiles of 508x508, about 5 minutes) reach a validation pixel error below this.
PIXEL_ERROR_AFTER_3_EPOCHS = 0.10


@pytest.mark.slow
def test_short_isbi_training_learns(data_dir, tmp_path):
    cfg = compose_train(
        [
            "experiment=isbi_cpu",
            "trainer.max_epochs=3",
            "callbacks.progress_bar=null",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path,
        data_dir,
    )
    metrics = train(cfg)
    assert metrics["val/pixel_error"] <= PIXEL_ERROR_AFTER_3_EPOCHS, metrics
