import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from unet.data.mirror import crop_with_mirror, mirror_pad

pads = st.integers(0, 40)


@given(st.integers(1, 12), st.integers(1, 12), pads, pads, pads, pads)
def test_mirror_pad_equals_numpy_reflect(h, w, top, bottom, left, right):
    a = np.arange(h * w, dtype=np.float32).reshape(h, w)
    # numpy cannot reflect a 1-pixel axis; mirroring it repeats the pixel ("edge")
    expected = np.pad(a, ((top, bottom), (0, 0)), mode="edge" if h == 1 else "reflect")
    expected = np.pad(expected, ((0, 0), (left, right)), mode="edge" if w == 1 else "reflect")
    np.testing.assert_array_equal(mirror_pad(a, top, bottom, left, right), expected)
    np.testing.assert_array_equal(
        mirror_pad(torch.from_numpy(a)[None, None], top, bottom, left, right)[0, 0].numpy(),
        expected,
    )


@given(st.integers(-30, 30), st.integers(-30, 30), st.integers(1, 40), st.integers(1, 40))
def test_crop_with_mirror_is_a_window_of_the_reflected_image(top, left, height, width):
    a = np.random.default_rng(0).random((3, 9, 11))
    big = np.pad(a, ((0, 0), (60, 60), (60, 60)), mode="reflect")
    expected = big[:, 60 + top : 60 + top + height, 60 + left : 60 + left + width]
    np.testing.assert_array_equal(crop_with_mirror(a, top, left, height, width), expected)


@given(
    st.integers(2, 12),
    st.integers(2, 12),
    st.integers(-30, 30),
    st.integers(-30, 30),
    st.integers(1, 40),
    st.integers(1, 40),
    st.sampled_from([np.uint8, np.int32, np.int64, np.float32, np.float64]),
)
def test_crop_with_mirror_of_a_2d_array_is_a_window_of_the_reflected_image(
    h, w, top, left, height, width, dtype
):
    # 2-D NumPy arrays take the OpenCV path where the window is within one reflection
    a = np.random.default_rng(1).integers(0, 250, (h, w)).astype(dtype)
    big = np.pad(a, 80, mode="reflect")
    expected = big[80 + top : 80 + top + height, 80 + left : 80 + left + width]
    window = crop_with_mirror(a, top, left, height, width)
    assert window.dtype == a.dtype and window.flags.c_contiguous
    np.testing.assert_array_equal(window, expected)
