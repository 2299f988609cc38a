from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from unet.data.samples import WholeImageDataset
from unet.metrics import PixelCounts, pixel_scores, score_isbi_stack
from unet.model.network import NetConfig, UNet
from unet.training.module import SegmentationModule


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

    config = NetConfig(depth=2, padding="same")

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


def test_per_epoch_scores_equal_the_metrics_package_on_the_same_probabilities():
    """One rule for the pixel scores: what training logs every epoch is, to the last bit
    that Lightning keeps (float32), what unet.metrics gives for the probabilities that
    predict_step returns for the same images."""
    rng = np.random.default_rng(0)
    shapes = [(40, 52), (40, 52), (36, 44)]  # two sizes, as cell frames may have
    images = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    classes = [(rng.random(s) < 0.6).astype(np.uint8) for s in shapes]
    weights = [np.ones(s, np.float32) for s in shapes]
    weights[1][:10] = 0  # an unannotated region, left out by both routes
    loader = DataLoader(WholeImageDataset(images, classes, weights), batch_size=1)
    torch.manual_seed(0)
    m = SegmentationModule(UNet(base_channels=4, depth=2, dropout=0.0), optimizer=None)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    logged = trainer.validate(m, dataloaders=loader, verbose=False)[0]
    probabilities = [p[0].numpy() for p in trainer.predict(m, dataloaders=loader)]

    counts = PixelCounts()
    for p, c, w in zip(probabilities, classes, weights, strict=True):
        counts.add(p, c, valid=w > 0)
    expected = counts.scores()
    assert 0 < expected["pixel_error"] < expected["pixel_error_t05"]  # a threshold other than 0.5
    for name in ("pixel_error", "pixel_error_t05", "iou", "dice"):
        assert logged[f"val/{name}"] == float(np.float32(expected[name])), name
    # eval.py predictions=<stack>: the same pixel error through score_isbi_stack
    stack, labels = np.stack(probabilities[:2]), np.stack(classes[:2])
    assert (
        score_isbi_stack(stack, labels)["pixel_error"] == pixel_scores(stack, labels)["pixel_error"]
    )
