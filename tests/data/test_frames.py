"""The frames of a prediction input (unet.data.frames)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from unet.data.frames import FrameSource
from unet.data.readers import DataError


def test_frame_source_reads_stacks_and_gray_rgb_pngs(tmp_path):
    tifffile.imwrite(
        tmp_path / "stack.tif", np.zeros((4, 10, 12), np.uint8), photometric="minisblack"
    )
    source = FrameSource(tmp_path / "stack.tif")
    assert len(source) == 4 and source.shapes == [(10, 12)] * 4
    assert [f.shape for _, f in source] == [(10, 12)] * 4
    gray_rgb = np.repeat(np.arange(20, dtype=np.uint8).reshape(4, 5)[..., None], 3, axis=-1)
    Image.fromarray(gray_rgb).save(tmp_path / "gray_rgb.png")
    [(name, frame)] = list(FrameSource(tmp_path / "gray_rgb.png"))
    assert name == "gray_rgb" and frame.shape == (4, 5) and frame[3, 4] == 19
    folder = tmp_path / "frames"
    folder.mkdir()
    tifffile.imwrite(folder / "t000.tif", np.zeros((5, 10, 12), np.uint8), photometric="minisblack")
    with pytest.raises(DataError, match="one 2D frame per file"):
        FrameSource(folder)
