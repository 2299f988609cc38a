import pytest
from hypothesis import given
from hypothesis import strategies as st

from unet.model import shapes


def test_paper_sizes():
    assert shapes.output_size(572) == 388
    assert shapes.halo() == 184
    assert shapes.smallest_input_covering(512) == 700
    assert shapes.output_size(700) >= 512


@given(st.integers(1, 1200), st.integers(1, 5))
def test_valid_sizes_make_every_pool_see_an_even_size(size, depth):
    s, ok = size, True
    for _ in range(depth):
        s -= 4
        ok &= s >= 2 and s % 2 == 0
        s //= 2
    s -= 4  # bottleneck
    ok &= s >= 1
    for _ in range(depth):
        s = 2 * s - 4
    ok &= s >= 1
    assert shapes.is_valid_input_size(size, depth) == ok


@given(st.integers(1, 1200), st.integers(1, 5), st.sampled_from(shapes.PADDINGS))
def test_nearest_valid_sizes_bracket_the_size(size, depth, padding):
    near = shapes.nearest_valid_input_sizes(size, depth, padding)
    assert all(shapes.is_valid_input_size(s, depth, padding) for s in near)
    assert max(near) >= size
    # nothing valid strictly between the neighbours and the size
    for s in range(min(near) + 1, max(near)):
        assert s == size or not shapes.is_valid_input_size(s, depth, padding)


def test_invalid_size_names_nearest_valid_sizes():
    with pytest.raises(shapes.InvalidInputSizeError, match="nearest valid sizes: 556, 572"):
        shapes.output_size(570)
    with pytest.raises(shapes.InvalidInputSizeError, match=r"width: .* 512, 528"):
        shapes.check_input_shape((512, 520), depth=4, padding="same")


@given(st.integers(1, 2000), st.integers(1, 5), st.sampled_from(shapes.PADDINGS))
def test_smallest_covering_input_is_smallest(out, depth, padding):
    s = shapes.smallest_input_covering(out, depth, padding)
    assert shapes.output_size(s, depth, padding) >= out
    assert all(
        shapes.output_size_or_none(t, depth, padding) is None
        or shapes.output_size(t, depth, padding) < out
        for t in range(1, s)
    )
