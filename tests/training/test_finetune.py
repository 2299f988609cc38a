"""Fine-tuning: model.init_from loads a trained model's weights, all but a head of another
class count, and names the layers of an architecture that does not fit."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from unet.inference.checkpoint import CheckpointError
from unet.model.network import UNet
from unet.training.module import SegmentationModule

SMALL = {"depth": 2, "base_channels": 4, "batch_norm": True}


@pytest.fixture
def two_class_ckpt(tmp_path):
    """A checkpoint as training writes it (weights under net., the architecture record)."""
    torch.manual_seed(1)
    net = UNet(num_classes=2, **SMALL)
    path = tmp_path / "two.ckpt"
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "net_config": net.config.to_dict()}, path)
    return path, net


def module(net: UNet, **kwargs) -> SegmentationModule:
    return SegmentationModule(net, optimizer=partial(torch.optim.Adam, lr=1e-3), **kwargs)


def test_a_three_class_head_starts_fresh_and_everything_else_loads(two_class_ckpt):
    path, trained = two_class_ckpt
    torch.manual_seed(2)
    net = UNet(num_classes=3, **SMALL)
    head_before = net.head.weight.detach().clone()
    module(net, init_from=str(path))
    theirs = trained.state_dict()
    for name, tensor in net.state_dict().items():
        if name.startswith("head."):
            assert tensor.shape[0] == 3
        else:
            assert torch.equal(tensor, theirs[name]), name
    assert torch.equal(net.head.weight, head_before)


def test_same_class_count_loads_every_weight(two_class_ckpt):
    path, trained = two_class_ckpt
    net = UNet(num_classes=2, **SMALL)
    module(net, init_from=str(path))
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, trained.state_dict()[name]), name


def test_another_architecture_names_the_layers(two_class_ckpt):
    path, _ = two_class_ckpt
    with pytest.raises(CheckpointError) as caught:
        module(UNet(in_channels=3, num_classes=3, **SMALL), init_from=str(path))
    message = str(caught.value)
    assert "in_channels 1 vs 3" in message and "down.0.0.weight: (4, 1, 3, 3)" in message
    assert "\n" not in message
    with pytest.raises(CheckpointError, match="only in the checkpoint"):
        module(UNet(num_classes=2, **(SMALL | {"batch_norm": False})), init_from=str(path))


def test_frozen_encoder_for_the_first_epochs(two_class_ckpt):
    path, _ = two_class_ckpt
    m = module(UNet(num_classes=3, **SMALL), init_from=str(path), freeze_encoder_epochs=1)
    m.on_train_epoch_start()  # epoch 0 (no trainer)
    assert not any(p.requires_grad for p in m.encoder_parameters())
    assert all(p.requires_grad for p in m.net.up.parameters()) and m.net.head.weight.requires_grad


def test_fine_tuning_takes_the_start_models_architecture_but_keeps_the_data_settings(tmp_path):
    from omegaconf import OmegaConf

    from unet.training.start_from import adopt_start_architecture

    start = UNet(num_classes=2, depth=2, base_channels=4, batch_norm=False, instance_norm=True)
    path = tmp_path / "start.ckpt"
    state = {f"net.{k}": v for k, v in start.state_dict().items()}
    torch.save({"state_dict": state, "net_config": start.config.to_dict()}, path)
    net = {"in_channels": 1, "num_classes": 3, "depth": 4, "base_channels": 16}
    net |= {"batch_norm": True, "instance_norm": False, "dropout": 0.1}
    cfg = OmegaConf.create({"model": {"init_from": str(path), "net": net}})
    changed = adopt_start_architecture(cfg)
    assert set(changed) == {
        "model.net.depth=2",
        "model.net.base_channels=4",
        "model.net.batch_norm=False",
        "model.net.instance_norm=True",
    }
    got = cfg.model.net
    assert (got.depth, got.base_channels, got.batch_norm, got.instance_norm) == (2, 4, False, True)
    assert (got.num_classes, got.in_channels, got.dropout) == (3, 1, 0.1)  # the user's
    # the adopted network takes every weight but the new 3-class head
    tuned = UNet(**OmegaConf.to_container(got))
    assert module(tuned, init_from=str(path)) is not None
    # nothing to adopt without a start model
    plain = OmegaConf.create({"model": {"init_from": None, "net": net}})
    assert adopt_start_architecture(plain) == [] and plain.model.net.depth == 4
