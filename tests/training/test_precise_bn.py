"""Batch-norm statistics recomputed over fixed training tiles (unet.training.precise_bn)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unet.model.network import UNet
from unet.training.precise_bn import PreciseBatchNorm, recompute_batch_norm


def test_running_statistics_become_the_plain_average_over_the_tiles():
    torch.manual_seed(0)
    net = nn.Sequential(nn.BatchNorm2d(2))
    tiles = [torch.randn(1, 2, 8, 9) * (k + 1) + k for k in range(5)]
    for _ in range(3):  # running statistics from other data first
        net.train()(torch.randn(1, 2, 8, 9) * 10)
    assert recompute_batch_norm(net, tiles) == 1 and not net.training
    bn = net[0]
    means = torch.stack([t.mean(dim=(0, 2, 3)) for t in tiles])
    variances = torch.stack([t.var(dim=(0, 2, 3), unbiased=True) for t in tiles])
    torch.testing.assert_close(bn.running_mean, means.mean(0))
    torch.testing.assert_close(bn.running_var, variances.mean(0))
    assert bn.momentum == 0.1  # the training momentum is restored


def test_weights_and_nets_without_batch_norm_are_untouched():
    torch.manual_seed(0)
    net = UNet(base_channels=2, depth=2, batch_norm=True)
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k}
    recompute_batch_norm(net, [torch.randn(1, 1, 44, 44)])
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "num_batches" not in k)
    plain = UNet(base_channels=2, depth=2)
    assert recompute_batch_norm(plain, [torch.randn(1, 1, 44, 44)]) == 0


def test_a_negative_tile_count_is_refused_with_its_key():
    with pytest.raises(ValueError, match=r"callbacks.precise_bn.tiles=-1: expected a count"):
        PreciseBatchNorm(tiles=-1)
