"""The training-tile and weight-map settings every dataset's DataModule takes.

One dataclass, :class:`TileSettings`, for what ``configs/data/base/tiles.yaml`` holds (and
``data/isbi.yaml``, ``data/base/ctc.yaml``, ``data/folder.yaml`` include): the keys stay
top-level in ``data`` (``data.tile_size=508``), and each DataModule builds this record from
them. The defaults here equal that file's values (a test compares them), so a DataModule
built in Python trains as ``src/train.py`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class TileSettings:
    """Random training tiles, the loader, and the weight maps (paper, Sec. 3).

    Args:
        tile_size: side of the training input tiles (paper: 572; its output window 388).
        samples_per_epoch: training tiles per epoch.
        batch_size: tiles per batch (paper: 1 large tile).
        num_workers: data-loader worker processes.
        w0, sigma: weight-map border term (paper: 10 and 5 px).
        border_size: instance masks: a pixel with two object ids in its
            ``border_size`` x ``border_size`` neighbourhood is background (binary labels,
            ISBI: unused).
        cache_dir: where weight maps are cached (None: no cache).
        crop: use only the top-left crop x crop pixels of every image (quick tests).
        seed: seed of the training-tile randomness.
        nonfinite: NaN or infinite pixels are refused ("refuse") or replaced by their
            image's median ("median") or 0 ("zero").
    """

    tile_size: int = 572
    samples_per_epoch: int = 100
    batch_size: int = 1
    num_workers: int = 1
    w0: float = 10.0  # paper, Sec. 3: w0 = 10, sigma = 5 px
    sigma: float = 5.0
    border_size: int = 3
    cache_dir: str | None = None
    crop: int | None = None
    seed: int = 0
    nonfinite: str = "refuse"


TILE_KEYS = tuple(f.name for f in fields(TileSettings))
