import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from unet.metrics import MetricInputError, simple_pixels, topological_errors, warp_label
from unet.metrics.warping import SIMPLE, T_CELLS, T_MEMBRANE

FOUR = ndimage.generate_binary_structure(2, 1)
EIGHT = ndimage.generate_binary_structure(2, 2)


def topology(cells: np.ndarray) -> tuple[int, int]:
    """(4-connected cells, 8-connected membrane components), outside the image = membrane."""
    padded = np.pad(cells.astype(bool), 1)
    return ndimage.label(padded, FOUR)[1], ndimage.label(~padded, EIGHT)[1]


def random_cells(seed: int, shape=(12, 12), smooth=1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.standard_normal(shape), smooth) > 0


def grid_of_cells(h=30, w=30, rows=(10, 20), cols=(15,)) -> np.ndarray:
    """Cells (True) separated by one-pixel membrane lines at the given rows and columns."""
    cells = np.ones((h, w), bool)
    cells[list(rows), :] = False
    cells[:, list(cols)] = False
    return cells


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.0, 1.5))
def test_simple_means_flipping_keeps_both_component_counts(seed, smooth):
    # the 3x3 lookup agrees with counting components of the whole image, for every pixel
    cells = random_cells(seed, (9, 10), smooth)
    before = topology(cells)
    simple = simple_pixels(cells)
    for y, x in np.ndindex(cells.shape):
        flipped = cells.copy()
        flipped[y, x] = ~flipped[y, x]
        assert (topology(flipped) == before) == simple[y, x], (y, x)


def test_lookup_table_examples():
    def code(window):  # bit k = pixel (k // 3, k % 3)
        return int(sum(int(v) << k for k, v in enumerate(np.asarray(window).reshape(-1))))

    isolated = [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
    inside = [[1, 1, 1], [1, 1, 1], [1, 1, 1]]
    straight_edge = [[1, 1, 1], [1, 1, 1], [0, 0, 0]]
    bridge = [[0, 1, 0], [0, 1, 0], [0, 1, 0]]  # removing it splits the cell
    corner_only = [[1, 0, 0], [0, 0, 0], [0, 0, 0]]  # diagonal: not 4-adjacent
    assert not SIMPLE[code(isolated)]  # removing deletes a cell
    assert not SIMPLE[code(inside)]  # removing makes a hole
    assert SIMPLE[code(straight_edge)]
    assert not SIMPLE[code(bridge)] and T_CELLS[code(bridge)] == 2
    assert T_CELLS[code(corner_only)] == 0  # adding the centre would make a new cell
    # the classification of remaining errors is complete: a non-simple pixel with one
    # adjacent cell component has no membrane around it (a one-pixel hole), and one with no
    # adjacent cell component has one membrane component around it
    assert (T_MEMBRANE[(T_CELLS == 1) & ~SIMPLE] == 0).all()
    assert (T_MEMBRANE[T_CELLS == 0] == 1).all()
    # simplicity does not depend on the centre pixel itself
    centre = 1 << 4
    assert all(SIMPLE[c] == SIMPLE[c | centre] for c in range(512))


def test_topology_preserving_boundary_shifts_have_no_warping_error():
    label = grid_of_cells(rows=(10, 20), cols=(15,))  # six cells
    # the vertical membrane moves one pixel right, the first horizontal one thickens to
    # three pixels, the second moves one pixel up: the same six cells, other boundaries
    prediction = grid_of_cells(rows=(9, 10, 11, 19), cols=(16,))
    assert topology(prediction) == topology(label)
    assert (prediction != label).sum() > 100  # plenty of pixel disagreement
    errors = topological_errors(label, prediction)
    assert errors.warping_error == 0 and errors.total == 0
    np.testing.assert_array_equal(errors.warped, prediction)  # fully warped onto it


def test_merging_two_cells_is_a_warping_error():
    label = grid_of_cells(rows=(10,), cols=())  # two cells, one horizontal membrane
    prediction = label.copy()
    prediction[10, 12:15] = True  # a 3-pixel gap in the membrane joins the cells
    errors = topological_errors(label, prediction)
    # each gap pixel touches both cells (above and below): none can be flipped
    assert errors.merges == 3 and errors.splits == 0
    assert errors.warping_error == pytest.approx(3 / label.size)
    assert topology(errors.warped) == topology(label)


def test_splitting_a_cell_is_a_warping_error():
    label = grid_of_cells(rows=(0, 29), cols=())  # one cell, membrane above and below
    prediction = grid_of_cells(rows=(0, 29), cols=(12,))  # a membrane line cuts it in two
    errors = topological_errors(label, prediction)
    # the cut grows in from both ends until one pixel holds the halves together
    assert errors.splits == 1 and errors.merges == 0
    assert errors.warping_error == pytest.approx(1 / label.size)
    assert topology(errors.warped) == topology(label)


def test_other_topological_errors_are_counted_apart():
    label = grid_of_cells(rows=(10,), cols=())
    prediction = label.copy()
    prediction[4, 4] = False  # a one-pixel membrane hole inside a cell
    prediction[20:24, 20:24] = False
    prediction[21:23, 21:23] = True  # a 12-pixel membrane ring around an island cell
    errors = topological_errors(label, prediction)
    assert errors.splits == errors.merges == 0 and errors.warping_error == 0
    assert errors.membranes_added == 1 + 12  # every pixel would open a hole in the cell
    assert errors.total == 13


def test_a_boundary_moved_by_two_pixels_stays_an_error_for_the_greedy_warping():
    # documents the module's caveat: the column in between already agrees, so the
    # membrane cannot travel across it by flips of disagreeing pixels only
    label = grid_of_cells(h=12, w=12, rows=(), cols=(5,))
    prediction = grid_of_cells(h=12, w=12, rows=(), cols=(7,))
    errors = topological_errors(label, prediction)
    assert errors.merges == 12 and errors.splits == 1
    assert topology(errors.warped) == topology(label)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1))
def test_warping_keeps_topology_and_only_moves_toward_the_prediction(seed_label, seed_target):
    label = random_cells(seed_label, (16, 15))
    target = random_cells(seed_target, (16, 15))
    warped = warp_label(label, target)
    assert topology(warped) == topology(label)
    changed = warped != label
    assert (warped[changed] == target[changed]).all()  # every flip agrees with the target
    # nothing simple is left to flip toward the target
    assert not (simple_pixels(warped) & (warped != target)).any()
    errors = topological_errors(label, target)
    assert errors.total == (warped != target).sum()


def test_bad_input_names_what_was_found():
    with pytest.raises(MetricInputError, match=r"\(4, 5\).*\(4, 6\).*same \(height, width\)"):
        warp_label(np.zeros((4, 5)), np.zeros((4, 6)))
    with pytest.raises(
        MetricInputError, match=r"prediction: found 3 distinct values \(0, 1, 2\).*binary"
    ):
        topological_errors(np.zeros((3, 3), int), np.arange(9).reshape(3, 3) % 3)
    assert issubclass(MetricInputError, ValueError)
