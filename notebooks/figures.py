"""The paper's Figures 2 and 3 drawn on real data.

    python notebooks/figures.py <data_dir> docs/figure3_hela.png [--dataset D] [--frame 01/039]
    python notebooks/figures.py <data_dir> docs/figure2_overlap_tile.png --figure 2

Figure 3, panels as in the paper: (a) raw image; (b) overlay with the ground-truth
instances; (c) the binary target with separation borders between touching cells (white:
cell, black: background); (d) the per-pixel loss weights (eq. 2).

Figure 2: the overlap-tile strategy on an ISBI slice: the image with its mirrored
surroundings, the first input tile of the paper's network (572 px, blue) and its output
window (388 px, yellow), as :class:`unet.inference.tiler.Tiler` plans them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from unet.data.weight_maps import instance_weight_map


def instance_colours(instances: np.ndarray, seed: int = 0) -> np.ndarray:
    """(H, W, 4) RGBA: one random bright colour per instance, transparent background."""
    ids = np.unique(instances)
    rng = np.random.default_rng(seed)
    palette = np.zeros((int(ids.max()) + 1, 4))
    palette[ids[ids > 0], :3] = rng.uniform(0.25, 1.0, (int((ids > 0).sum()), 3))
    palette[ids[ids > 0], 3] = 0.45
    return palette[instances]


def figure3(
    image: np.ndarray,
    instances: np.ndarray,
    path: str | Path,
    w0: float = 10.0,
    sigma: float = 5.0,
    border_size: int = 3,
    title: str | None = None,
) -> Path:
    """Render the four panels of the paper's Fig. 3 for one frame to a PNG; returns the path.

    Args:
        image: (H, W) gray values.
        instances: (H, W) instance ids, 0 = background.
        path: where to write the PNG.
        w0, sigma, border_size: as in :func:`unet.data.weight_maps.instance_weight_map`.
    """
    classes, weights = instance_weight_map(instances, w0=w0, sigma=sigma, border_size=border_size)
    h, w = image.shape
    fig = Figure(figsize=(2 * w / 100 + 1.2, 2 * h / 100 + 0.8), dpi=100)
    axes = fig.subplots(2, 2)
    panels = [
        ("a: raw image", dict(X=image, cmap="gray")),
        ("b: ground-truth instances", dict(X=image, cmap="gray")),
        ("c: target with separation borders", dict(X=classes, cmap=ListedColormap(["k", "w"]))),
        ("d: loss weights w(x)", dict(X=weights, cmap="jet")),
    ]
    for ax, (name, kwargs) in zip(axes.ravel(), panels, strict=True):
        shown = ax.imshow(interpolation="nearest", **kwargs)
        ax.set_title(name, fontsize=11)
        ax.set_axis_off()
    axes[0, 1].imshow(instance_colours(instances), interpolation="nearest")
    fig.colorbar(shown, ax=axes[1, 1], fraction=0.046, pad=0.02)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def figure2(image: np.ndarray, path: str | Path | None = None, tile: int = 572) -> Figure:
    """Draw the overlap-tile strategy (paper, Fig. 2) for the paper's network on ``image``:
    the mirrored surroundings, the first input tile and its output window. Saved to
    ``path`` if given; returns the figure."""
    from matplotlib.patches import Rectangle

    from unet.data.mirror import mirror_pad
    from unet.inference.tiler import Tiler
    from unet.model.network import UNet

    plan = Tiler(tile_size=tile).plan(UNet(), image.shape)
    rows, cols = plan.rows, plan.cols
    out = len(rows.weights[0])  # the output window's side: 388 px for 572
    context = rows.out_starts[0] - rows.in_starts[0]  # 92 px for the paper's network
    h, w = image.shape
    shown = mirror_pad(image, context, tile, context, tile)
    fig = Figure(figsize=(6, 6), dpi=100)
    ax = fig.subplots()
    extent = (-context - 0.5, w + tile - 0.5, h + tile - 0.5, -context - 0.5)
    ax.imshow(shown, cmap="gray", extent=extent)
    boxes = [
        ((-0.5, -0.5), w, h, "white", "--", "the image (mirrored outside)"),
        (
            (cols.in_starts[0] - 0.5, rows.in_starts[0] - 0.5),
            tile,
            tile,
            "deepskyblue",
            "-",
            f"input tile, {tile} px",
        ),
        (
            (cols.out_starts[0] - 0.5, rows.out_starts[0] - 0.5),
            out,
            out,
            "yellow",
            "-",
            f"its output window, {out} px",
        ),
    ]
    for corner, width, height, colour, style, label in boxes:
        ax.add_patch(
            Rectangle(corner, width, height, fill=False, ec=colour, lw=3, ls=style, label=label)
        )
    ax.set_xlim(-context - 0.5, w + context)
    ax.set_ylim(h + context, -context - 0.5)
    ax.legend(loc="lower right", fontsize=9)
    ax.set_title(f"overlap-tile: {plan.num_tiles} tiles of {tile} px cover {h}x{w}")
    ax.set_axis_off()
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    return fig


def main(argv: list[str] | None = None) -> None:
    from unet.data.ctc import read_frame

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--figure", type=int, choices=(2, 3), default=3)
    parser.add_argument("--dataset", default="DIC-C2DH-HeLa")
    parser.add_argument("--frame", default="01/039", help="sequence/number, e.g. 01/039")
    args = parser.parse_args(argv)
    if args.figure == 2:
        from unet.data.isbi import read_isbi_training

        figure2(read_isbi_training(args.data_dir)[0][0], args.output)
        print(args.output)
        return
    sequence, number = args.frame.split("/")
    frame = read_frame(args.data_dir / args.dataset, sequence, number, markers=False)
    figure3(frame.image, frame.instances, args.output, title=f"{args.dataset} {args.frame}")
    print(args.output)


if __name__ == "__main__":
    main()
