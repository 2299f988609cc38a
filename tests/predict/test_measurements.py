"""Per-object outputs: measurements.csv (unet.predict.measurements, unet.predict.zarr.measurements)
and
the Fiji/QuPath outlines under rois/ (unet.predict.rois), through src/predict.py's predict."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import roifile
import tifffile
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage.measure import points_in_poly, regionprops_table

from unet.config.checks import ConfigError
from unet.inference.postprocess import PostProcessing
from unet.model.network import UNet
from unet.predict.files import predict_files
from unet.predict.measurements import COLUMNS, PIXELS, REGIONPROPS, PixelSize, measure_frame
from unet.predict.objects import ObjectOutputError, check_object_outputs
from unet.predict.rois import outlines
from unet.predict.task import predict
from unet.predict.zarr.measurements import measure_chunks

PROPERTIES = ("label", "area", "centroid", "bbox", "intensity_mean")


def blobs(h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint16 gray values with smooth structure (as in test_streaming)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = 1000 + 300 * np.sin(yy / 7.0) * np.cos(xx / 9.0)
    return (image + rng.normal(0, 40, (h, w))).astype(np.uint16)


def tiny_net(padding: str = "same") -> UNet:
    torch.manual_seed(0)
    return UNet(base_channels=2, depth=2, padding=padding, dropout=0.0).eval()


def read_table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        return list(reader)


def column(rows: list[dict[str, str]], name: str, frame: str | None = None) -> np.ndarray:
    chosen = [r for r in rows if frame is None or r["frame"] == frame]
    if name in ("frame", "unit"):
        return np.array([r[name] for r in chosen])
    if name == "touches_border":
        return np.array([r[name] == "True" for r in chosen])
    return np.array([float(r[name]) for r in chosen])


def assert_table_equals_regionprops(rows, frame, labels, probability, pixel=PIXELS):
    """Every column of ``frame``'s rows against regionprops_table on (labels, probability)."""
    expected = regionprops_table(labels, probability, properties=PROPERTIES)
    for ours, theirs in REGIONPROPS.items():
        np.testing.assert_allclose(
            column(rows, ours, frame), expected[theirs], rtol=1e-6, err_msg=ours
        )
    area, cy, cx = expected["area"], expected["centroid-0"], expected["centroid-1"]
    np.testing.assert_allclose(column(rows, "area", frame), area * pixel.y * pixel.x)
    np.testing.assert_allclose(column(rows, "centroid_y", frame), cy * pixel.y)
    np.testing.assert_allclose(column(rows, "centroid_x", frame), cx * pixel.x)
    assert set(column(rows, "unit", frame)) <= {pixel.unit}
    # touching the border, from the pixels themselves
    edge = np.zeros(labels.shape, bool)
    edge[[0, -1], :] = edge[:, [0, -1]] = True
    touching = [bool(np.any(edge[labels == k])) for k in expected["label"]]
    np.testing.assert_array_equal(column(rows, "touches_border", frame), touching)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, compose_predict, save_checkpoint):
    """A folder of two frames (different sizes) predicted with measurements and rois."""
    root = tmp_path_factory.mktemp("objects")
    net = tiny_net()
    ckpt = root / "tiny.ckpt"
    save_checkpoint(net, ckpt)
    frames = root / "frames"
    frames.mkdir()
    for t, size in enumerate([(64, 80), (56, 72)]):
        tifffile.imwrite(frames / f"t{t:03d}.tif", blobs(*size, seed=t))
    out = root / "out"
    settings_ = [f"ckpt_path={ckpt}", f"input={frames}", f"output={out}", "progress=false"]
    predict(compose_predict([*settings_, "measurements=true", "rois=true", "overlays=false"]))
    return out


def frame_arrays(out: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(labels, cell probability) per frame, as the run wrote them."""
    with tifffile.TiffFile(out / "probabilities.tif") as tif:
        pages = [p for s in tif.series for p in (s.asarray().reshape(-1, *s.shape[-2:]))]
    names = sorted(p.stem for p in (out / "labels").glob("*.tif"))
    return {
        n: (tifffile.imread(out / "labels" / f"{n}.tif"), pages[i]) for i, n in enumerate(names)
    }


def test_table_equals_regionprops_on_the_written_labels(folder_run):
    rows = read_table(folder_run / "measurements.csv")
    arrays = frame_arrays(folder_run)
    assert set(column(rows, "frame")) == set(arrays)
    for name, (labels, probability) in arrays.items():
        assert labels.max() >= 2  # the run found objects to measure
        assert_table_equals_regionprops(rows, name, labels, probability)
    assert not list(folder_run.parent.glob("*.partial"))  # the table landed with the rest


def test_roi_sets_read_back_with_the_outlines_written(folder_run):
    for name, (labels, _) in frame_arrays(folder_run).items():
        shapes = outlines(labels)
        rois = roifile.roiread(folder_run / "rois" / f"{name}.zip")
        assert [r.name for r in rois] == [str(k) for k in np.unique(labels[labels > 0])]
        for roi in rois:
            assert roi.roitype == roifile.ROI_TYPE.POLYGON
            np.testing.assert_array_equal(roi.coordinates(), shapes[int(roi.name)])


def test_geojson_has_one_closed_polygon_per_object(folder_run):
    for name, (labels, _) in frame_arrays(folder_run).items():
        shapes = outlines(labels)
        data = json.loads((folder_run / "rois" / f"{name}.geojson").read_text())
        assert data["type"] == "FeatureCollection"
        assert len(data["features"]) == len(np.unique(labels[labels > 0]))
        for feature in data["features"]:
            props, geometry = feature["properties"], feature["geometry"]
            assert props["objectType"] == "detection" and geometry["type"] == "Polygon"
            label = props["measurements"]["label"]
            assert props["name"] == str(label)
            (ring,) = geometry["coordinates"]
            assert ring[0] == ring[-1]  # closed, as GeoJSON requires
            np.testing.assert_array_equal(np.array(ring[:-1]), shapes[label])


def test_outlines_enclose_exactly_the_object_pixels(folder_run):
    """An independent check of the half-pixel frame: pixel centres (x + 0.5, y + 0.5) inside
    each outline are the object's pixels, holes filled (background 8-connected)."""
    for labels, _ in frame_arrays(folder_run).values():
        shapes = outlines(labels)
        yy, xx = np.mgrid[0 : labels.shape[0], 0 : labels.shape[1]]
        centres = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], axis=1)
        for label, points in shapes.items():
            inside = points_in_poly(centres, points).reshape(labels.shape)
            filled = ndimage.binary_fill_holes(labels == label, structure=np.ones((3, 3)))
            np.testing.assert_array_equal(inside, filled, err_msg=f"object {label}")


def test_frame_without_objects_gives_no_rows_and_empty_roi_files(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for t in range(2):
        tifffile.imwrite(frames / f"t{t:03d}.tif", blobs(48, 48, seed=t))
    calls = []

    def first_frame_only(cells):  # frame t001 has no objects
        calls.append(1)
        return PostProcessing()(cells) if len(calls) == 1 else np.zeros(cells.shape, np.uint16)

    out = tmp_path / "out"
    predict_files(
        tiny_net(), frames, out, postprocess=first_frame_only, progress=False,
        overlays=False, measurements=True, rois=True,
    )  # fmt: skip
    rows = read_table(out / "measurements.csv")
    assert len(rows) > 0 and set(column(rows, "frame")) == {"t000"}
    with zipfile.ZipFile(out / "rois" / "t001.zip") as archive:
        assert archive.testzip() is None and archive.namelist() == []
    assert roifile.roiread(out / "rois" / "t001.zip") == []
    empty = json.loads((out / "rois" / "t001.geojson").read_text())
    assert empty == {"type": "FeatureCollection", "features": []}


def random_labels(draw_seed: int, shape: tuple[int, int]) -> np.ndarray:
    """Blobs of smoothed noise, labelled (objects cross chunk borders), ids with gaps."""
    rng = np.random.default_rng(draw_seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    labels, n = ndimage.label(smooth > 0.05)
    ids = np.concatenate([[0], rng.permutation(np.arange(1, 3 * n + 1))[:n]])  # gaps, shuffled
    return ids[labels]


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    h=st.integers(1, 60),
    w=st.integers(1, 60),
    ch=st.integers(1, 25),
    cw=st.integers(1, 25),
)
def test_chunk_wise_table_equals_the_whole_image_table(seed, h, w, ch, cw):
    labels = random_labels(seed, (h, w))
    probability = np.random.default_rng(seed + 1).random((h, w)).astype(np.float32)
    pixel = PixelSize(0.5, 0.25, "micrometer")
    whole = measure_frame(labels, probability, "z0", pixel)
    chunked = measure_chunks(
        lambda ys, xs: labels[ys, xs], lambda ys, xs: probability[ys, xs],
        (h, w), (ch, cw), "z0", pixel,
    )  # fmt: skip
    for name in COLUMNS:
        if whole[name].dtype == object:
            np.testing.assert_array_equal(chunked[name], whole[name], err_msg=name)
        else:
            np.testing.assert_allclose(chunked[name], whole[name], rtol=1e-6, err_msg=name)


def test_zarr_store_gets_the_table_of_its_labels_in_physical_units(tmp_path):
    zarr = pytest.importorskip("zarr")
    ome_zarr_writer = pytest.importorskip("ome_zarr.writer")
    from unet.inference.tiler import Tiler
    from unet.predict.zarr.route import predict_to_zarr

    group = zarr.open_group(str(tmp_path / "in.zarr"), mode="w")
    ome_zarr_writer.write_image(
        blobs(150, 170), group, scale_factors=[],
        axes=[{"name": a, "type": "space", "unit": "micrometer"} for a in "yx"],
        scale={"y": 0.5, "x": 0.25}, storage_options={"chunks": (64, 64)},
    )  # fmt: skip
    ome = group.attrs["ome"]  # ome-zarr 0.18's writer drops the axes' units; put them back
    for axis in ome["multiscales"][0]["axes"]:
        axis["unit"] = "micrometer"
    group.attrs["ome"] = ome
    out = tmp_path / "out.zarr"
    predict_to_zarr(
        tiny_net("valid"), tmp_path / "in.zarr", out, chunk=64, tiler=Tiler(tile_size=92),
        probability_dtype="float32", progress=False, measurements=True,
    )  # fmt: skip
    labels = zarr.open_array(str(out / "labels/cells/0"), mode="r")[:]
    probability = zarr.open_array(str(out / "0"), mode="r")[:]
    assert len(np.unique(labels)) > 3  # several objects, some crossing 64 px chunk borders
    rows = read_table(out / "measurements.csv")
    pixel = PixelSize(0.5, 0.25, "micrometer")
    assert_table_equals_regionprops(rows, None, labels.astype(np.int64), probability, pixel)


def test_settings_are_checked(compose_predict, tmp_path):
    base = ["ckpt_path=x.ckpt", "input=x.tif", f"output={tmp_path / 'out'}"]
    with pytest.raises(ConfigError, match="measurements"):
        predict(compose_predict([*base, "measurements=maybe"]))
    with pytest.raises(ObjectOutputError, match="rois=true"):
        check_object_outputs(False, True, labels=True, store=True, ranks=False)
    with pytest.raises(ObjectOutputError, match="labels=false"):
        check_object_outputs(True, False, labels=False, store=True, ranks=False)
    with pytest.raises(ObjectOutputError, match="trainer"):
        check_object_outputs(True, False, labels=True, store=False, ranks=True)
    check_object_outputs(True, True, labels=False, store=False, ranks=False)  # folder: fine
    assert PixelSize.of((1.0, 1.0), (None, None)) == PIXELS
    assert PixelSize.of((0.5, 0.5), (None, None)).unit == "unknown"
