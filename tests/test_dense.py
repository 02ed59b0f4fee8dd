"""The dense linear probe: mIoU against a hand count, a planted signal it must find, random features it must not,
and masks that follow the image through the evaluation transform."""
import numpy as np
import pytest
import torch
from PIL import Image

import superclip
from superclip.evaluate.dense import confusion_matrix, dense_probe, segmentation_metrics
from superclip.evaluate.features import Encoder
from superclip.evaluate.tasks import mask_geometry, segmentation_probe
from superclip.model import get_transforms

from .conftest import TINY_CFG


def test_miou_equals_a_hand_count():
    # 3 classes, two 2x3 masks, one ignored pixel (255). Pairs (truth, prediction) over the 11 scored pixels:
    # truth 0: predicted 0, 0, 1     truth 1: predicted 1, 1, 1, 1, 2     truth 2: predicted 2, 2, 0
    # IoU 0 = 2 / (3 + 3 - 2) = 1/2, IoU 1 = 4 / (5 + 5 - 4) = 2/3, IoU 2 = 2 / (3 + 3 - 2) = 1/2
    target = torch.tensor([[[0, 0, 1], [1, 2, 255]], [[2, 2, 0], [1, 1, 1]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 0]], [[2, 0, 0], [1, 1, 2]]])
    conf = confusion_matrix(pred, target, 3, 255)
    assert conf.tolist() == [[2, 1, 0], [0, 4, 1], [1, 0, 2]]
    m = segmentation_metrics(conf)
    assert m["miou"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3, abs=1e-12)
    assert m["pixel_acc"] == pytest.approx(8 / 11, abs=1e-12)
    assert m["mean_class_acc"] == pytest.approx((2 / 3 + 4 / 5 + 2 / 3) / 3, abs=1e-12)
    # a fourth class that is neither in the masks nor predicted does not count
    assert segmentation_metrics(confusion_matrix(pred, target, 4, 255))["miou"] == pytest.approx(m["miou"], abs=1e-12)


def _blocks(n, classes, side=4, patch=8, region=2, seed=0):
    """(n, side*side) class per patch and (n, side*patch, side*patch) masks: regions of region x region patches,
    one class each (regions of one patch would cap any bilinear upsampling at mIoU 0.92: where three patches of
    another class meet a corner pixel they outweigh its own)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, classes, (n, side // region, side // region), generator=g)
    per_patch = coarse.repeat_interleave(region, 1).repeat_interleave(region, 2)
    masks = per_patch.repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    return per_patch.reshape(n, side * side), masks


def test_planted_signal_is_found_and_random_features_are_not():
    classes, width = 4, 16
    g = torch.Generator().manual_seed(1)
    tr_lab, tr_masks = _blocks(60, classes, seed=2)
    te_lab, te_masks = _blocks(40, classes, seed=3)

    def planted(labels):  # the patch's class as a one-hot in the first dimensions, under noise
        x = torch.randn(*labels.shape, width, generator=g) * 0.2
        return x + 3 * torch.nn.functional.one_hot(labels, width).float()

    m = dense_probe(planted(tr_lab), tr_masks, planted(te_lab), te_masks, classes)
    assert m["miou"] >= 0.95 and m["pixel_acc"] >= 0.97
    r = dense_probe(torch.randn(60, 16, width, generator=g), tr_masks, torch.randn(40, 16, width, generator=g),
                    te_masks, classes)
    assert r["miou"] < 0.3 and abs(r["pixel_acc"] - 1 / classes) < 0.1  # chance: mIoU 1/7, accuracy 1/4


def test_mask_follows_the_resize_and_crop_of_the_image():
    model = superclip.build_model(TINY_CFG)  # 32 px input: shortest side to 32, then a centre crop
    preprocess = get_transforms(model)[1]
    mask = np.zeros((40, 64), dtype=np.int64)
    mask[:, 40:] = 2  # right part class 2; the image: the same part white
    image = Image.fromarray((np.where(mask[..., None] == 2, 255, 0) * np.ones(3)).astype(np.uint8))
    white = preprocess(image)[0] > 0  # (32, 32) where the preprocessed image is white
    out = mask_geometry(preprocess)(mask)
    assert out.shape == (32, 32) and set(out.unique().tolist()) == {0, 2}
    edge = int(white[0].float().argmax())  # first white column; bicubic blurs one column either side
    keep = [c for c in range(32) if abs(c - edge) > 1]
    assert edge > 10 and torch.equal(out[:, keep] == 2, white[:, keep])


def test_segmentation_probe_on_a_folder(tmp_path):
    for split, n in (("train", 8), ("test", 4)):
        for i in range(n):
            (tmp_path / split / "images").mkdir(parents=True, exist_ok=True)
            (tmp_path / split / "annotations").mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(i)
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / split / "images" /
                                                                                     f"{i}.jpg")
            mask = np.full((40, 48), 255, dtype=np.uint8)
            mask[:, :24], mask[:20, 24:] = 1, 2
            Image.fromarray(mask, mode="L").save(tmp_path / split / "annotations" / f"{i}.png")
    model = superclip.build_model(TINY_CFG).eval()
    m = segmentation_probe(Encoder(model), get_transforms(model)[1], str(tmp_path / "train"), str(tmp_path / "test"))
    assert m["n_classes"] == 3 and m["n_train"] == 8 and m["n_test"] == 4
    assert m["iou_per_class"][0] is None  # class 0 is in no mask and (zero init, no signal for it) never predicted
    assert 0 <= m["miou"] <= 1 and 0 <= m["pixel_acc"] <= 1
