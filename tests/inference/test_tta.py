"""Test-time augmentation (unet.inference.tta): flips and rotations turned back and averaged."""

import pytest
import torch

from unet.inference.tiler import Tiler, predict_whole_image
from unet.inference.tta import (
    D4,
    TTA,
    TTAError,
    _transform,
    _untransform,
    count_tiles,
    predict_probabilities,
)
from unet.model.network import NetConfig, UNet


class _PixelNet(torch.nn.Module):
    """A 1x1 conv: commutes with every flip and rotation."""

    depth, padding = 2, "same"
    config = NetConfig(base_channels=1, depth=2, padding="same")

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("tta", list(TTA))
def test_tta_turns_predictions_back(tta):
    image = torch.randn(2, 1, 13, 22)  # not square: quarter turns swap the axes
    net = _PixelNet().eval()
    plain = predict_probabilities(net, image, Tiler())
    torch.testing.assert_close(predict_probabilities(net, image, Tiler(), tta=tta), plain)
    # and for a net that does not commute: the mean of the softmax of each turned-back copy
    torch.manual_seed(0)
    net = UNet(base_channels=2, depth=2, dropout=0.0).eval()
    tiler = Tiler(tile_size=52)
    seen = []
    prob = predict_probabilities(net, image, tiler, tta=tta, on_batch=seen.append)
    with torch.no_grad():
        expected = sum(
            _untransform(predict_whole_image(net, _transform(image, k, f)).softmax(1), k, f)
            for k, f in TTA[tta]
        ) / len(TTA[tta])
    torch.testing.assert_close(prob, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(prob.sum(1), torch.ones(2, 13, 22))
    assert sum(seen) == 2 * count_tiles(net, (13, 22), tiler, tta)


def test_d4_transforms_are_distinct_and_inverted():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    outs = {(tuple(y.shape), tuple(y.flatten().tolist())) for y in (_transform(x, *t) for t in D4)}
    assert len(outs) == 8
    for k, f in D4:
        torch.testing.assert_close(_untransform(_transform(x, k, f), k, f), x)
    assert len(TTA["paper7"]) == 7 and (0, False) not in TTA["paper7"]


def test_unknown_tta_is_refused_with_the_choices():
    with pytest.raises(TTAError, match=r"tta='flips4': expected one of none, flips8, paper7"):
        net = UNet(base_channels=2, depth=2).eval()
        predict_probabilities(net, torch.zeros(1, 1, 8, 8), tta="flips4")
