"""Topology-preserving warping of a binary label, and the topological errors that remain.

Jain et al. 2010, "Boundary learning by optimization with topological constraints" (CVPR):
the warping error of a binary prediction T against a ground-truth label L* is the pixel
disagreement left after L* is warped as close to T as its topology allows,

    D(T || L*) = min over L ◁ L* of |{x : L(x) != T(x)}|,

where L ◁ L* means that L is reached from L* by flipping simple pixels one at a time. The
ISBI 2012 challenge counted only the remaining disagreements that are splits or merges
(``TopologicalErrors.warping_error``).

Conventions (1 = cell interior, as in the ISBI labels):
- Cells are 4-connected, membrane is 8-connected (the two connectivities must differ for
  curves to separate the plane as they should), and outside the image counts as membrane.
- A pixel is simple if flipping it changes neither the number of cells nor the number of
  membrane components. In 2D this is decided by its 3x3 neighbourhood through two
  topological numbers: T_cells = the number of 4-connected cell components among its 8
  neighbours that are 4-adjacent to it, T_membrane = the number of 8-connected membrane
  components among its 8 neighbours. It is simple if and only if both are 1. Both numbers
  are looked up in 512-entry tables indexed by the 3x3 neighbourhood.
- Warping is the greedy descent of Jain et al.: flip simple pixels of the label where it
  disagrees with the prediction, until none is left. Flipped pixels then agree and are
  never flipped back; only pixels next to a flip are tested again. The order is fixed,
  not by the prediction's confidence: sweeps over the four interleaved sub-lattices
  (row % 2, column % 2), all simple pixels of a sub-lattice at once. The greedy finds a
  local optimum: a boundary displaced by two or more pixels in one piece cannot move (the
  pixels in between already agree), and what remains of it counts as errors.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage

from unet.errors import MetricInputError
from unet.labels import binary_cells

_FOUR = ndimage.generate_binary_structure(2, 1)
_EIGHT = ndimage.generate_binary_structure(2, 2)

# Bit k of a neighbourhood code is the pixel at row k // 3, column k % 3 of the 3x3 window
# (bit 4 is the pixel itself). Bits 1, 3, 5, 7 are its 4-neighbours (N, W, E, S).
_WINDOW = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
_EDGE_BITS = (1, 3, 5, 7)


def _topological_number_tables() -> tuple[np.ndarray, np.ndarray]:
    """T_cells and T_membrane of the centre pixel for each of the 512 3x3 neighbourhoods."""
    t_cells = np.zeros(512, np.uint8)
    t_membrane = np.zeros(512, np.uint8)
    for code in range(512):
        window = ((code >> np.arange(9)) & 1).astype(bool).reshape(3, 3)
        cells = window.copy()
        cells[1, 1] = False
        components, _ = ndimage.label(cells, _FOUR)
        t_cells[code] = len({components.flat[k] for k in _EDGE_BITS} - {0})
        membrane = ~window
        membrane[1, 1] = False
        t_membrane[code] = ndimage.label(membrane, _EIGHT)[1]
    return t_cells, t_membrane


T_CELLS, T_MEMBRANE = _topological_number_tables()
SIMPLE = (T_CELLS == 1) & (T_MEMBRANE == 1)  # (512,) bool


class TopologicalErrors(NamedTuple):
    """The warped label and the disagreements with the prediction that warping cannot remove.

    Each remaining pixel is non-simple in the warped label; it is classified from its 3x3
    neighbourhood by what flipping it to the prediction's value would do:
    ``splits`` (removing a cell pixel that joins two parts of a cell, T_cells >= 2),
    ``merges`` (adding a cell pixel that joins two cells, T_cells >= 2), ``cells_added`` /
    ``cells_removed`` (a cell appears / a one-pixel cell vanishes, T_cells = 0) and
    ``membranes_added`` / ``membranes_removed`` (a one-pixel membrane hole inside a cell
    appears / vanishes, T_membrane = 0).
    """

    warped: np.ndarray  # (H, W) bool, the label after warping
    splits: int
    merges: int
    cells_added: int
    cells_removed: int
    membranes_added: int
    membranes_removed: int
    pixels: int  # H * W, the normaliser of the warping error

    @property
    def warping_error(self) -> float:
        """(splits + merges) / pixels: the ISBI 2012 "splits and mergers" warping error."""
        return (self.splits + self.merges) / self.pixels

    @property
    def total(self) -> int:
        """All remaining disagreements (every one of them changes the topology)."""
        return (
            self.splits
            + self.merges
            + self.cells_added
            + self.cells_removed
            + self.membranes_added
            + self.membranes_removed
        )


def _check_pair(label: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    label, target = np.asarray(label), np.asarray(target)
    if label.ndim != 2 or label.shape != target.shape:
        raise MetricInputError(
            f"found a label of shape {label.shape} and a prediction of shape {target.shape}; "
            "expected two binary images of the same (height, width)"
        )
    return (
        binary_cells(label, "the label", MetricInputError),
        binary_cells(target, "the prediction", MetricInputError),
    )


def _codes(flat: np.ndarray, index: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """3x3 neighbourhood codes of the pixels ``index`` of a padded, flattened image."""
    code = np.zeros(index.size, np.intp)
    for bit, offset in enumerate(offsets):
        code |= flat[index + offset].astype(np.intp) << bit
    return code


def _sublattices(shape: tuple[int, int]) -> np.ndarray:
    """Flat map of which sub-lattice, 2 * (row % 2) + column % 2, each pixel is on."""
    rows, columns = np.arange(shape[0]) % 2, np.arange(shape[1]) % 2
    return np.add.outer(2 * rows, columns).astype(np.int8).reshape(-1)


def _pad(image: np.ndarray) -> np.ndarray:
    """One pixel of membrane (0) around the image: outside counts as membrane."""
    return np.pad(image.astype(np.uint8), 1)


def simple_pixels(label: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels of a binary label whose flip preserves its topology."""
    label, _ = _check_pair(label, label)
    padded = _pad(label)
    h, w = label.shape
    code = np.zeros((h, w), np.intp)
    for bit, (dy, dx) in enumerate(_WINDOW):
        code |= padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w].astype(np.intp) << bit
    return SIMPLE[code]


def _warp(label: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy warping; returns the padded warped label, its flat view and the remaining pixels.

    Pixels on the same sub-lattice (row % 2, column % 2) are two or more pixels apart, so
    none lies in another's 3x3 neighbourhood: flipping all simple ones of a sub-lattice at
    once is the same as flipping them one after the other. A pixel's simplicity changes
    only when a neighbour flips, so after the first test a pixel is tested again only then.
    """
    width = label.shape[1] + 2
    current = _pad(label)  # (H + 2, W + 2)
    flat = current.reshape(-1)  # a view: flips change ``current``
    pending = (current != _pad(target)).reshape(-1)  # disagreements not yet flipped
    queued = pending.copy()  # pixels waiting in ``to_test``
    sublattice = _sublattices(current.shape)
    offsets = np.array([dy * width + dx for dy, dx in _WINDOW], np.intp)
    ring = offsets[offsets != 0]

    start = np.flatnonzero(pending)
    to_test = [[start[sublattice[start] == g]] for g in range(4)]  # arrays of flat indices
    while any(to_test):
        for g in range(4):
            if not to_test[g]:
                continue
            candidates = np.concatenate(to_test[g])
            to_test[g] = []
            queued[candidates] = False
            flip = candidates[SIMPLE[_codes(flat, candidates, offsets)]]
            if flip.size == 0:
                continue
            flat[flip] ^= 1  # (an index listed twice still flips once)
            pending[flip] = False
            # Neighbours of a flip are on the other three sub-lattices, never on this one.
            near = (flip[:, None] + ring).reshape(-1)
            near = near[pending[near] & ~queued[near]]
            queued[near] = True
            near_lattice = sublattice[near]
            for h in range(4):
                added = near[near_lattice == h]
                if added.size:
                    to_test[h].append(added)
    return current, flat, np.flatnonzero(pending)


def warp_label(label: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Warp a binary ``label`` toward ``target`` by simple-pixel flips, keeping its topology;
    (H, W) bool."""
    label, target = _check_pair(label, target)
    current, _, _ = _warp(label, target)
    return current[1:-1, 1:-1].astype(bool)


def topological_errors(label: np.ndarray, target: np.ndarray) -> TopologicalErrors:
    """Warp ``label`` (ground truth) toward ``target`` (binary prediction), classify the rest.

    Args:
        label: (H, W) binary ground truth, 1 = cell interior, 0 = membrane.
        target: (H, W) binary prediction, same convention.
    """
    label, target = _check_pair(label, target)
    return _topological_errors(label, target)


def _topological_errors(label: np.ndarray, target: np.ndarray) -> TopologicalErrors:
    """``topological_errors`` of two (H, W) bool images, without input checks."""
    current, flat, remaining = _warp(label, target)
    width = label.shape[1] + 2
    offsets = np.array([dy * width + dx for dy, dx in _WINDOW], np.intp)
    code = _codes(flat, remaining, offsets)
    t_cells = T_CELLS[code]
    adding = flat[remaining] == 0  # the warped label says membrane, the prediction says cell
    removing = ~adding

    def count(mask: np.ndarray) -> int:
        return int(np.count_nonzero(mask))

    # A remaining pixel is not simple: T_cells != 1, or T_cells == 1 and T_membrane == 0.
    return TopologicalErrors(
        warped=current[1:-1, 1:-1].astype(bool),
        splits=count(removing & (t_cells >= 2)),
        merges=count(adding & (t_cells >= 2)),
        cells_added=count(adding & (t_cells == 0)),
        cells_removed=count(removing & (t_cells == 0)),
        membranes_added=count(removing & (t_cells == 1)),
        membranes_removed=count(adding & (t_cells == 1)),
        pixels=label.size,
    )
