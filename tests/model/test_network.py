import itertools
import math

import pytest
import torch

from unet.model.network import UNet, count_parameters, forward_flops
from unet.model.shapes import InvalidInputSizeError, output_size


def test_paper_network():
    net = UNet()
    assert count_parameters(net) == 31_030_658
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    assert len(convs) == 23  # paper, Sec. 2: 18 3x3 convs, 4 up-convs, the final 1x1 conv
    # The shape arithmetic, checked without computing: the meta device runs no kernels.
    with torch.device("meta"):
        meta = UNet()
        assert meta(torch.empty(1, 1, 572, 572)).shape == (1, 2, 388, 388)
    assert forward_flops(net.config, (572, 572)) == pytest.approx(300.9e9, rel=1e-3)


def test_same_padding_keeps_size_and_parameter_count():
    net = UNet(padding="same")
    assert count_parameters(net) == 31_030_658  # padding adds no parameters
    with torch.device("meta"):
        assert UNet(padding="same")(torch.empty(2, 1, 512, 384)).shape == (2, 2, 512, 384)


VARIANTS = list(
    itertools.product(
        ("valid", "same"), (False, True), ("transpose", "bilinear"), (0.0, 0.5), (2, 3)
    )
)


@pytest.mark.parametrize(("padding", "batch_norm", "up_mode", "dropout", "depth"), VARIANTS)
def test_every_variant_runs_and_every_parameter_gets_a_gradient(
    padding, batch_norm, up_mode, dropout, depth
):
    torch.manual_seed(0)
    net = UNet(
        in_channels=2,
        num_classes=3,
        depth=depth,
        base_channels=4,
        padding=padding,
        dropout=dropout,
        batch_norm=batch_norm,
        up_mode=up_mode,
    )
    size = 92 if (padding == "valid" and depth == 3) else 44 if padding == "valid" else 32
    x = torch.randn(2, 2, size, size + 8 if padding == "valid" else size + 16)
    y = net(x)
    expected = (output_size(x.shape[2], depth, padding), output_size(x.shape[3], depth, padding))
    assert y.shape == (2, 3, *expected)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_invalid_input_rejected_with_nearest_sizes():
    net = UNet(base_channels=4, depth=3)
    with pytest.raises(
        InvalidInputSizeError, match=r"height: input size 104 .* nearest valid sizes: 100, 108"
    ):
        net(torch.zeros(1, 1, 104, 108))
    with pytest.raises(InvalidInputSizeError, match=r"width: .*nearest valid sizes: 188$"):
        UNet(base_channels=4)(torch.zeros(1, 1, 188, 100))  # below the smallest valid size


def test_paper_initialisation():
    torch.manual_seed(0)
    net = UNet()
    conv = net.down[2][2]  # second 3x3 conv of level 3: 256 -> 256 channels
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.01)
    up = net.up[0].up  # 2x2 up-conv 1024 -> 512: each output sees 1024 inputs
    assert up.weight.std().item() == pytest.approx(math.sqrt(2 / 1024), rel=0.01)
    assert all(m.bias.abs().sum() == 0 for m in net.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize(
    "kwargs", [dict(padding="full"), dict(up_mode="nearest"), dict(dropout=1.0), dict(depth=0)]
)
def test_bad_arguments_rejected(kwargs):
    with pytest.raises(ValueError):
        UNet(**kwargs)


def test_torchscript_round_trip(tmp_path):
    net = UNet(base_channels=4, depth=2, dropout=0.0).eval()
    x = torch.randn(1, 1, 60, 60)
    scripted = torch.jit.trace(net, x)
    scripted.save(tmp_path / "net.pt")
    loaded = torch.jit.load(tmp_path / "net.pt")
    torch.testing.assert_close(loaded(x), net(x))


def test_instance_norm_uses_each_images_own_statistics():
    """The same output in training and prediction, and for an image alone or in a batch."""
    import torch

    from unet.model.network import UNet

    torch.manual_seed(0)
    net = UNet(depth=2, base_channels=4, dropout=0.0, instance_norm=True, padding="same")
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in net.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    images = torch.randn(3, 1, 32, 32)
    images[1] *= 5.0  # another intensity scale: batch statistics would mix it in
    with torch.no_grad():
        net.train()
        trained = net(images)
        net.eval()
        alone = torch.cat([net(images[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(trained, alone, rtol=1e-5, atol=1e-5)


def test_records_written_before_instance_norm_load_and_both_norms_are_refused():
    import pytest

    from unet.model.network import NetConfig

    old = NetConfig(base_channels=4).to_dict()
    del old["instance_norm"]
    assert NetConfig.from_dict(old).instance_norm is False
    with pytest.raises(ValueError, match="batch_norm and instance_norm exclude each other"):
        NetConfig(batch_norm=True, instance_norm=True)
