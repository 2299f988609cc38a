"""Error colouring and panel layout (unet.io.panels) on hand-made predictions."""

import numpy as np

from unet.io.panels import (
    GAP,
    HEADER,
    KINDS,
    cell_errors,
    cell_panel,
    pixel_errors,
    render_panel,
    tile_panel,
)


def four_cells() -> np.ndarray:
    """(40, 60) truth: cells 1 and 2 touch side by side, cell 3 alone, cell 4 far right."""
    truth = np.zeros((40, 60), np.int32)
    truth[5:15, 5:15], truth[5:15, 15:25] = 1, 2  # a touching pair
    truth[25:35, 5:25] = 3  # one long cell
    truth[25:35, 45:55] = 4  # a cell the prediction misses
    return truth


def test_one_known_merge_and_one_known_split_are_coloured_as_such():
    truth = four_cells()
    predicted = np.zeros_like(truth)
    predicted[5:15, 5:25] = 7  # cells 1 and 2 as one object: a false merge
    predicted[25:35, 5:15], predicted[25:35, 15:25] = 8, 9  # cell 3 in two: a false split
    predicted[2:6, 40:44] = 5  # an object where there is no cell: a false cell
    kinds = cell_errors(predicted, truth)
    assert (kinds[5:15, 5:25] == 1).all()  # the merged object, red
    assert (kinds[25:35, 5:25] == 2).all()  # the split cell
    assert (kinds[25:35, 45:55] == 3).all()  # the missed cell
    assert (kinds[2:6, 40:44] == 4).all()  # the false cell
    assert set(np.unique(kinds)) == {0, 1, 2, 3, 4}
    assert (kinds[truth + predicted == 0] == 0).all()  # background agreeing: no error


def test_a_perfect_prediction_has_no_errors_and_unannotated_cells_are_not_false():
    truth = four_cells()
    assert not cell_errors(truth * 3, truth).any()  # other ids, same objects
    predicted = truth.copy()
    predicted[0:4, 50:58] = 9  # a cell that nobody annotated
    annotated = np.ones(truth.shape, bool)
    annotated[0:5, 45:60] = False
    assert not cell_errors(predicted, truth, annotated).any()
    assert (cell_errors(predicted, truth)[0:4, 50:58] == 4).all()


def test_membrane_errors_are_pixel_errors_where_annotated():
    classes = np.array([[0, 0, 1, 1]])
    prob = np.array([[0.9, 0.1, 0.2, 0.8]], np.float32)
    weight = np.array([[1.0, 1.0, 1.0, 0.0]], np.float32)
    assert pixel_errors(prob, classes, weight, membranes=True).tolist() == [[5, 0, 6, 0]]
    assert pixel_errors(prob, classes, weight, membranes=False).tolist() == [[8, 0, 7, 0]]


def test_panel_shows_four_pictures_and_the_error_colours():
    truth = four_cells()
    predicted = np.zeros_like(truth)
    predicted[5:15, 5:25] = 7
    image = np.random.default_rng(0).normal(size=truth.shape).astype(np.float32)
    panel = cell_panel(image, truth, predicted)
    h, w = truth.shape
    assert panel.shape[1] == 4 * w + 3 * GAP and panel.dtype == np.uint8 and panel.ndim == 3
    errors = panel[HEADER : HEADER + h, 3 * (w + GAP) :]
    assert (errors[10, 10] == KINDS[1][1]).all()  # merged pair in the merge colour
    assert (errors[30, 50] == KINDS[3][1]).all()  # missed cell
    assert (panel[HEADER : HEADER + h, w : w + GAP] == 255).all()  # white gap


def test_tile_panel_cuts_the_input_to_the_output_centre():
    image = np.arange(100, dtype=np.float32).reshape(10, 10)
    classes = np.zeros((10, 10), np.int64)
    classes[:, 5:] = 1
    weight = np.ones((10, 10), np.float32)
    prob = np.full((6, 6), 0.25, np.float32)  # valid convolutions: smaller output
    panel = tile_panel(image, classes, prob, weight, membranes=True)
    assert panel.shape[1] == 4 * 6 + 3 * GAP
    body = panel[HEADER : HEADER + 6]
    assert (body[:, 6 + GAP : 6 + GAP + 3] == 0).all()  # membrane, black
    assert (body[:, 2 * (6 + GAP) : 2 * (6 + GAP) + 6] == 64).all()  # P = 0.25
    assert (body[:, 3 * (6 + GAP) + 3 :] == KINDS[6][1]).all()  # cells called membrane


def test_render_panel_says_no_errors_when_there_are_none():
    image = np.zeros((20, 20), np.float32)
    same = np.zeros((20, 20, 3))
    panel = render_panel(image, same, same, np.zeros((20, 20), np.uint8))
    assert panel.shape == (HEADER + 20 + 16, 4 * 20 + 3 * GAP, 3)
