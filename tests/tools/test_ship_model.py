"""scripts/ship_model.py and its helper: the card's data set, the check frame of a stack."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import tifffile

from unet.inference.shipped import check_frame

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("ship_model", ROOT / "scripts/ship_model.py")
ship_model = importlib.util.module_from_spec(_spec)
sys.modules["ship_model"] = ship_model
_spec.loader.exec_module(ship_model)


def test_the_check_frame_of_a_stack_is_its_slice_written_alone(tmp_path):
    stack = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    tifffile.imwrite(tmp_path / "volume.tif", stack)
    path = check_frame(tmp_path / "volume.tif", 2, tmp_path)
    assert path.name == "volume_z002.tif"
    np.testing.assert_array_equal(tifffile.imread(path), stack[2])
    assert check_frame(tmp_path / "volume.tif", None, tmp_path) == tmp_path / "volume.tif"


def test_the_card_names_the_data_set_by_what_its_datamodule_recorded():
    name = ship_model.dataset_name
    assert name({"dataset": "PhC-C2DH-U373", "data_dir": "/x/data"}) == "PhC-C2DH-U373"
    assert name({"val_slices": 5, "data_dir": "/x/data"}) == "isbi2012"
    assert name({"data_dir": "/x/my_cells", "mask_type": "instance"}) == "my_cells"
    assert name({}) == "own"
