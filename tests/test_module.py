from functools import partial

import pytest
import torch

from unet.module import SegmentationModule
from unet.network import UNet


def module():
    return SegmentationModule(
        UNet(base_channels=2, depth=2, dropout=0.0), optimizer=partial(torch.optim.SGD, lr=0.1)
    )


def run_validation(m, logits_fn, target, weight=None):
    m.net = _Fixed(logits_fn)
    logged = {}
    m.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    m.log_dict = lambda values, **kw: logged.update({k: float(v) for k, v in values.items()})
    batch = {
        "image": torch.zeros(1, 1, *target.shape[-2:]),
        "target": target,
        "weight": torch.ones(target.shape) if weight is None else weight,
    }
    m.validation_step(batch, 0)
    m.on_validation_epoch_end()
    return logged


class _Fixed(torch.nn.Module):
    """Stands in for the network: returns given logits, cropped to the tiler's request."""

    depth, padding = 2, "same"

    def __init__(self, logits_fn):
        super().__init__()
        self.logits_fn = logits_fn

    def forward(self, x):
        return self.logits_fn(x.shape[-2:])


def test_perfect_prediction_scores_zero_error():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[..., 2:6, 2:6] = 1

    def perfect(shape):
        logits = torch.zeros(1, 2, *shape)
        logits[0, 1, 2:6, 2:6] = 5.0
        logits[0, 0] = -logits[0, 1] + 0.0
        logits[0, 0][target[0] == 0] = 5.0
        return logits

    logged = run_validation(module(), perfect, target)
    assert logged["val/pixel_error"] == pytest.approx(0.0, abs=1e-6)
    assert logged["val/pixel_error_t05"] == pytest.approx(0.0, abs=1e-6)
    assert logged["val/iou"] == pytest.approx(1.0)
    assert logged["val/dice"] == pytest.approx(1.0)


def test_pixel_error_takes_the_best_threshold():
    # the cell probability is 0.3 on cells and 0.1 elsewhere: wrong at 0.5, right at 0.2
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[..., :4, :] = 1

    def shifted(shape):
        p = torch.where(target[0] == 1, 0.3, 0.1)
        return torch.stack([torch.zeros(8, 8), torch.log(p / (1 - p))])[None]

    logged = run_validation(module(), shifted, target)
    assert logged["val/pixel_error"] == pytest.approx(0.0, abs=1e-6)
    assert logged["val/pixel_error_t05"] == pytest.approx(1.0)  # no cell pixel predicted: F1 = 0


def test_training_step_crops_targets_to_the_output_window():
    m = module()
    target = torch.zeros(1, 60, 60, dtype=torch.long)
    batch = {"image": torch.randn(1, 1, 60, 60), "target": target, "weight": torch.ones(1, 60, 60)}
    m.log = lambda *a, **k: None
    loss = m.training_step(batch, 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()


def test_predict_step_gives_cell_probabilities():
    m = module().eval()
    with torch.no_grad():
        prob = m.predict_step({"image": torch.randn(2, 1, 30, 41)}, 0)
    assert prob.shape == (2, 30, 41)
    assert float(prob.min()) >= 0.0 and float(prob.max()) <= 1.0


def test_zero_weight_pixels_are_left_out_of_the_metrics():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[..., :4, :] = 1
    weight = torch.ones(1, 8, 8)
    weight[..., :2, :] = 0  # an unannotated region: the prediction there must not count

    def cells_only_in_rows_2_to_4(shape):
        p = torch.full((8, 8), 0.1)
        p[2:4] = 0.9
        return torch.stack([torch.zeros(8, 8), torch.log(p / (1 - p))])[None]

    logged = run_validation(module(), cells_only_in_rows_2_to_4, target, weight)
    assert logged["val/pixel_error_t05"] == pytest.approx(0.0, abs=1e-6)
    assert logged["val/iou"] == pytest.approx(1.0)
    unweighted = run_validation(module(), cells_only_in_rows_2_to_4, target)
    assert unweighted["val/iou"] == pytest.approx(0.5)
