import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unet import shapes
from unet.network import UNet
from unet.tiler import predict_whole_image

NETS = {p: UNet(base_channels=2, depth=2, padding=p, dropout=0.0).eval() for p in shapes.PADDINGS}


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
    if h == 1 or w == 1:
        return  # numpy cannot reflect a 1-pixel axis; the shape check above still holds
    padded = np.pad(image[0, 0].numpy(), ((top, in_h - h - top), (left, in_w - w - left)), mode="reflect")
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
    torch.testing.assert_close(crop[..., margin:-margin, margin:-margin], whole[..., 32 + margin : 92 - margin, 20 + margin : 112 - margin])


@pytest.mark.parametrize("padding", shapes.PADDINGS)
def test_batch_of_images(padding):
    out = predict_whole_image(NETS[padding], torch.randn(3, 1, 33, 47))
    assert out.shape == (3, 2, 33, 47)
