import numpy as np
import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from unet.inference.tiler import (
    Tiler,
    _axis_plan,
    edge_reach,
    predict_whole_image,
    tile_memory_bytes,
)
from unet.model import shapes
from unet.model.network import UNet

VARIANTS = [(p, u) for p in shapes.PADDINGS for u in ("transpose", "bilinear")]


def tiny_net(padding: str, up_mode: str = "transpose", depth: int = 2) -> UNet:
    torch.manual_seed(0)  # the same weights whatever ran before
    return UNet(base_channels=2, depth=depth, padding=padding, up_mode=up_mode, dropout=0.0).eval()


NETS = {p: tiny_net(p) for p in shapes.PADDINGS}
TINY = {(p, u, d): tiny_net(p, u, d) for p, u in VARIANTS for d in (2, 3)}
# float32 convs on different input sizes may sum in different orders (oneDNN picks its
# kernels by shape): equal results agree to about 1e-5 relative on logits of order 10
CLOSE = dict(rtol=1e-4, atol=1e-4)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 70), st.integers(1, 70), st.sampled_from(shapes.PADDINGS))
def test_whole_image_prediction_keeps_shape_and_uses_mirrored_context(h, w, padding):
    net = NETS[padding]
    image = torch.randn(1, 1, h, w)
    with torch.no_grad():
        out = predict_whole_image(net, image)
    assert out.shape == (1, 2, h, w)
    # the same computation by hand with numpy's reflect padding
    if padding == "valid":
        in_h, in_w = (shapes.smallest_input_covering(s, 2) for s in (h, w))
        top, left = shapes.halo(2) // 2, shapes.halo(2) // 2
    else:
        in_h, in_w = (-(-s // 4) * 4 for s in (h, w))
        top, left = (in_h - h) // 2, (in_w - w) // 2
    assume(h > 1 and w > 1)  # numpy cannot reflect a 1-pixel axis; the shape check holds
    padded = np.pad(
        image[0, 0].numpy(), ((top, in_h - h - top), (left, in_w - w - left)), mode="reflect"
    )
    with torch.no_grad():
        full = net(torch.from_numpy(padded)[None, None])
    if padding == "same":
        full = full[..., top : top + h, left : left + w]
    torch.testing.assert_close(out, full[..., :h, :w])


def test_prediction_is_translation_consistent_inside_the_image():
    # a valid net's output pixel depends only on its receptive field, so predicting a
    # crop equals cropping the prediction wherever the field lies inside the image, for
    # crop offsets that are multiples of 2**depth (the max pools' grid must line up)
    torch.manual_seed(0)
    net = NETS["valid"]
    image = torch.randn(1, 1, 120, 130)
    with torch.no_grad():
        whole = predict_whole_image(net, image)
        crop = predict_whole_image(net, image[..., 32:92, 20:112])
    margin = shapes.halo(2) // 2
    torch.testing.assert_close(
        crop[..., margin:-margin, margin:-margin],
        whole[..., 32 + margin : 92 - margin, 20 + margin : 112 - margin],
        **CLOSE,
    )


@pytest.mark.parametrize("padding", shapes.PADDINGS)
def test_batch_of_images(padding):
    out = predict_whole_image(NETS[padding], torch.randn(3, 1, 33, 47))
    assert out.shape == (3, 2, 33, 47)


# --- overlap-tile prediction (Tiler) ---------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 150),
    w=st.integers(1, 150),
    variant=st.sampled_from(VARIANTS),
    depth=st.sampled_from([2, 3]),
    tile_steps=st.one_of(st.none(), st.integers(3, 10)),
    batch=st.sampled_from([(1, None), (2, None), (2, 1), (1, 3)]),
)
@example(h=520, w=696, variant=("valid", "transpose"), depth=3, tile_steps=None, batch=(1, None))
@example(h=520, w=696, variant=("same", "transpose"), depth=2, tile_steps=None, batch=(1, None))
@example(h=3, w=200, variant=("valid", "bilinear"), depth=2, tile_steps=4, batch=(2, 1))
def test_tiled_prediction_equals_whole_image_prediction(h, w, variant, depth, tile_steps, batch):
    """Stitched tiles = one forward pass over the same mirrored input, for every variant.

    Tolerance: float rounding only (``CLOSE``), also for ``same`` nets: the default overlap
    discards every output pixel that a tile's zero padding can reach.
    """
    padding, up_mode = variant
    net = TINY[(padding, up_mode, depth)]
    step = 2**depth
    overlap = -(-2 * edge_reach(depth, padding, up_mode) // step) * step
    smallest = next(
        s
        for s in range(overlap + step, 1000)
        if shapes.is_valid_input_size(s, depth, padding)
        and shapes.output_size(s, depth, padding) >= overlap + step
    )
    if tile_steps is None:  # automatic tiles in a budget of a few small tiles
        tiler = Tiler(memory_gb=tile_memory_bytes(net, 2 * smallest, 2 * smallest) / 2**30)
    else:
        tiler = Tiler(tile_size=smallest + tile_steps * step, batch_size=batch[1])
    image = torch.randn(batch[0], 1, h, w)
    plan = tiler.plan(net, (h, w))
    with torch.no_grad():
        whole = predict_whole_image(net, image)
    seen = []
    tiled = tiler(net, image, on_batch=seen.append)
    assert tiled.shape == (batch[0], 2, h, w) and tiled.dtype == torch.float32
    torch.testing.assert_close(tiled, whole, **CLOSE)
    assert sum(seen) == batch[0] * plan.num_tiles
    # no tile runs past the input a whole-image pass would need (no wasted compute there)
    for axis, size in ((plan.rows, h), (plan.cols, w)):
        in_size, before, _ = _axis_plan(size, depth, padding)
        assert axis.in_starts[0] == -before
        assert axis.in_starts[-1] + axis.in_sizes[-1] == in_size - before


class _Recorder(torch.nn.Module):
    """Wraps a net and keeps every input it was given."""

    def __init__(self, net):
        super().__init__()
        self.net, self.depth, self.padding, self.config = net, net.depth, net.padding, net.config
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.clone())
        return self.net(x)


@settings(max_examples=15, deadline=None)
@given(st.integers(2, 90), st.integers(2, 90), st.sampled_from(shapes.PADDINGS))
def test_tiles_are_windows_of_the_numpy_reflect_padded_image(h, w, padding):
    net = _Recorder(TINY[(padding, "transpose", 2)])
    tiler = Tiler(tile_size=60 if padding == "valid" else 64, batch_size=1)
    image = torch.randn(1, 1, h, w)
    tiler(net, image)
    plan = tiler.plan(net, (h, w))
    pad = 200
    big = np.pad(image[0, 0].numpy(), pad, mode="reflect") if min(h, w) > 1 else None
    tiles = [(i, j) for group in plan.groups() for i, j in group]
    assert len(net.inputs) == len(tiles)
    for (i, j), x in zip(tiles, net.inputs, strict=True):
        top, left = plan.rows.in_starts[i] + pad, plan.cols.in_starts[j] + pad
        expected = big[top : top + plan.rows.in_sizes[i], left : left + plan.cols.in_sizes[j]]
        np.testing.assert_array_equal(x[0, 0].numpy(), expected)


def test_batch_size_bounds_every_forward_pass():
    # tiles of all images share passes, never more than batch_size at once (memory)
    net = _Recorder(TINY[("valid", "transpose", 2)])
    tiler = Tiler(tile_size=60, batch_size=3)
    tiler(net, torch.randn(4, 1, 70, 90))
    assert max(len(x) for x in net.inputs) == 3
    assert sum(len(x) for x in net.inputs) == 4 * tiler.plan(net, (70, 90)).num_tiles


def test_same_net_with_a_smaller_overlap_blends_without_a_step():
    # overlaps below 2 x edge_reach trade exactness for speed: the linear ramps still
    # hide the seams better than abutting tiles, and much better than no overlap at all
    net = TINY[("same", "transpose", 2)]
    image = torch.randn(1, 1, 150, 150)
    with torch.no_grad():
        whole = predict_whole_image(net, image)

    def error(overlap):
        return (Tiler(tile_size=64, overlap=overlap)(net, image) - whole).abs().mean().item()

    assert error(None) < 1e-6
    assert error(32) < error(0)


def test_paper_net_plan_and_invalid_tile_sizes():
    with torch.device("meta"):
        net = UNet()  # the paper's network, 572 -> 388
    with pytest.raises(shapes.InvalidInputSizeError, match="tile_size: height: .*556, 572"):
        Tiler(tile_size=570).plan(net, (512, 512))
    with pytest.raises(shapes.InvalidInputSizeError, match="no stride"):
        Tiler(tile_size=188).plan(net, (512, 512))  # output 4 px < 2**4
    with pytest.raises(shapes.InvalidInputSizeError, match="multiple of 2\\*\\*depth = 16"):
        Tiler(overlap=8).plan(net, (512, 512))
    plan = Tiler(tile_size=572).plan(net, (2048, 2048))
    # 388 px windows on a 384 px stride (a multiple of 16); the last tile shrunk to the rest
    assert plan.rows.out_starts == (0, 384, 768, 1152, 1536, 1920)
    assert plan.rows.in_sizes == (572,) * 5 + (316,)
    assert plan.rows.in_starts[0] == -92
    # a budget of one 572 tile picks tiles no larger than that
    budget = tile_memory_bytes(net, 572, 572) / 2**30
    auto = Tiler(memory_gb=budget).plan(net, (2048, 2048))
    assert max(auto.rows.in_sizes) * max(auto.cols.in_sizes) <= 572 * 572
    # an image that fits in one tile is one whole-image pass
    assert Tiler(memory_gb=64).plan(net, (512, 512)).tile_shapes() == {(700, 700): 1}
    # a long thin image gets long tiles
    thin = Tiler(memory_gb=budget).plan(net, (100, 5000))
    assert thin.rows.in_sizes == (284,) and max(thin.cols.in_sizes) > 572
    # max_tile caps the chosen side (the largest valid one up to it), not a given one
    capped = Tiler(memory_gb=64, max_tile=1280).plan(net, (2048, 2048))
    assert max(capped.rows.in_sizes) == max(capped.cols.in_sizes) == 1276
    assert Tiler(memory_gb=64).plan(net, (2048, 2048)).tile_shapes() == {(2236, 2236): 1}
    assert Tiler(tile_size=2236, max_tile=700).plan(net, (2048, 2048)).num_tiles == 1
    thin = Tiler(memory_gb=64, max_tile=700).plan(net, (100, 5000))
    assert max(thin.rows.in_sizes + thin.cols.in_sizes) <= 700


def test_edge_reach():
    assert edge_reach(4, "valid", "transpose") == 0  # the paper's net: windows just abut
    assert edge_reach(4, "same", "transpose") == 94
    assert edge_reach(4, "valid", "bilinear") == 15
