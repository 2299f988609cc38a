import math

import pytest
import torch

from unet.model.loss import WeightedCrossEntropy, weighted_cross_entropy


def test_matches_hand_computation():
    # one image, 2 classes, 1x2 pixels
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 0]]])
    weight = torch.tensor([[[1.0, 3.0]]])
    # pixel 0: p_0 = e^2 / (e^2 + 1); pixel 1: p_0 = 1 / (1 + e)
    expected = (
        1.0 * -math.log(math.exp(2) / (math.exp(2) + 1)) + 3.0 * -math.log(1 / (1 + math.e))
    ) / 2
    assert weighted_cross_entropy(logits, target, weight).item() == pytest.approx(
        expected, rel=1e-6
    )


def test_unit_weights_equal_torch_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 5, 7), torch.randint(0, 3, (2, 5, 7))
    ours = WeightedCrossEntropy()(logits, target, torch.ones(2, 5, 7))
    torch.testing.assert_close(ours, torch.nn.functional.cross_entropy(logits, target))


def test_zero_weight_pixels_do_not_count():
    torch.manual_seed(1)
    logits, target = torch.randn(1, 2, 4, 4), torch.randint(0, 2, (1, 4, 4))
    weight = torch.ones(1, 4, 4)
    weight[..., 2:] = 0
    changed = logits.clone()
    changed[..., 2:] = 1e4 * torch.randn(1, 2, 4, 2)
    assert weighted_cross_entropy(logits, target, weight) == weighted_cross_entropy(
        changed, target, weight
    )


def test_large_logits_do_not_overflow():
    logits = torch.tensor([[[[1e4]], [[-1e4]]]])
    assert weighted_cross_entropy(logits, torch.tensor([[[0]]])).item() == 0.0
    assert weighted_cross_entropy(logits, torch.tensor([[[1]]])).item() == pytest.approx(2e4)


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="do not match"):
        weighted_cross_entropy(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, dtype=torch.long))
