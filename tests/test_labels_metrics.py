"""Label mapping (DFC2020 / IGBP -> 8 classes), targets, and dataset-level metrics against
hand-computed values, including absent classes and ignored pixels / samples."""

import json
import math

import numpy as np
import pytest
import rasterio
import torch
from conftest import EXAMPLES

from s1s2_encoders.errors import DatasetError
from training.labels import class_histogram, dfc_to_classes, igbp_to_classes, multi_label, single_label
from training.metrics import ConfusionMatrix, MultiLabelCounts, json_safe

NAMES4 = ["a", "b", "c", "d"]


# ---------------------------------------------------------------------------------------- labels
def test_dfc_ten_classes_map_to_eight_with_savanna_snow_and_nodata_ignored():
    dfc = np.arange(11, dtype=np.uint8)  # 0 no data, 1..10
    assert dfc_to_classes(dfc).tolist() == [255, 0, 1, 255, 2, 3, 4, 5, 255, 6, 7]
    assert dfc_to_classes(dfc.reshape(1, 11)).shape == (1, 11)
    with pytest.raises(DatasetError, match=r"DFC2020 labels contain value\(s\) \[11, 17\] outside the scheme \(0 = no data, 1..10\)"):
        dfc_to_classes(np.array([1, 11, 17, 11]))
    with pytest.raises(DatasetError, match=r"whole numbers"):
        dfc_to_classes(np.array([1.5]))


def test_igbp_maps_through_igbp2dfc():
    igbp = np.arange(18)
    # IGBP2DFC = [0,1,1,1,1,1,2,2,3,3,4,5,6,7,6,8,9,10], then the 8-class mapping
    expected = [255, 0, 0, 0, 0, 0, 1, 1, 255, 255, 2, 3, 4, 5, 4, 255, 6, 7]
    assert igbp_to_classes(igbp).tolist() == expected
    with pytest.raises(DatasetError, match=r"IGBP labels contain value\(s\) \[18\]"):
        igbp_to_classes(np.array([18]))


def test_real_sen12ms_lc_patch_maps_to_valid_classes():
    with rasterio.open(EXAMPLES / "sen12ms" / "ROIs1158_spring_lc_1_p30.tif") as src:
        igbp = src.read(1)
    classes = igbp_to_classes(igbp)
    assert classes.shape == igbp.shape and classes.dtype == np.uint8
    assert set(np.unique(classes)) <= set(range(8)) | {255}
    # pixel by pixel agreement with the two tables applied by hand
    table = {0: 255, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 1, 7: 1, 8: 255, 9: 255, 10: 2, 11: 3, 12: 4, 13: 5, 14: 4, 15: 255, 16: 6, 17: 7}
    assert all(classes[igbp == v].tolist() == [table[int(v)]] * int((igbp == v).sum()) for v in np.unique(igbp))


def test_single_label_is_the_majority_among_valid_pixels():
    # 10 pixels: 255 x5 (the original would pick 255), class 2 x3, class 0 x2 -> 2
    crop = np.array([[255, 255, 255, 255, 255], [2, 2, 2, 0, 0]], dtype=np.uint8)
    assert int(single_label(crop)) == 2
    tie = np.array([[1, 1, 4, 4]], dtype=np.uint8)
    assert int(single_label(tie)) == 1  # ties -> lower class index
    empty = np.full((3, 3), 255, dtype=np.uint8)
    assert int(single_label(empty)) == 255  # no valid pixel: ignored sample
    batch = np.stack([crop[:, :4], np.full((2, 4), 255, np.uint8)])  # first: [255 x4], [2, 2, 2, 0]
    assert single_label(batch).tolist() == [2, 255]


def test_multi_label_uses_ten_percent_of_valid_pixels():
    # 20 valid pixels: class 0 x15, class 3 x2 (10 % exactly -> in), class 5 x1 (5 % -> out),
    # class 7 x2 (10 % -> in); plus 30 ignored pixels that must not dilute the fractions
    values = [0] * 15 + [3] * 2 + [5] * 1 + [7] * 2 + [255] * 30
    crop = np.array(values, dtype=np.uint8).reshape(5, 10)
    targets, valid = multi_label(crop)
    assert targets.tolist() == [1, 0, 0, 1, 0, 0, 0, 1] and bool(valid)
    targets, valid = multi_label(np.full((2, 4, 4), 255, np.uint8))
    assert targets.shape == (2, 8) and not targets.any() and valid.tolist() == [False, False]


def test_class_histogram_refuses_values_outside_the_scheme():
    assert class_histogram(np.array([[0, 7, 7, 255]])).tolist() == [1, 0, 0, 0, 0, 0, 0, 2]
    with pytest.raises(DatasetError, match=r"class map holds value\(s\) \[9\]; expected 0..7 or 255"):
        class_histogram(np.array([[0, 9]]))


# ---------------------------------------------------------------------------------------- confusion matrix
def _hand_example() -> ConfusionMatrix:
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 1, 0, 1, 1, 2, 3, 0]), torch.tensor([0, 0, 0, 1, 1, 2, 255, 2]))
    return cm


def test_single_label_metrics_match_hand_computed_values_with_an_absent_class():
    cm = _hand_example()
    # rows = truth: 0 -> [2, 1, 0, 0]; 1 -> [0, 2, 0, 0]; 2 -> [1, 0, 1, 0]; 3 absent; one ignored
    assert cm.counts.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    acc = cm.per_class_accuracy()
    np.testing.assert_allclose(acc[:3], [2 / 3, 1.0, 0.5])
    assert math.isnan(acc[3])
    assert cm.average_accuracy() == pytest.approx((2 / 3 + 1 + 0.5) / 3)  # 0.7222: class 3 left out
    assert cm.overall_accuracy() == pytest.approx(5 / 7)
    f1 = cm.per_class_f1()
    np.testing.assert_allclose(f1[:3], [4 / 6, 4 / 5, 2 / 3])
    assert math.isnan(f1[3])
    assert cm.average_f1() == pytest.approx((4 / 6 + 4 / 5 + 2 / 3) / 3)
    np.testing.assert_allclose(cm.per_class_iou()[:3], [2 / 4, 2 / 3, 1 / 2])
    assert cm.mean_iou() == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    summary = cm.summary("single_label", NAMES4)
    assert summary["absent_classes"] == ["d"] and summary["n_samples"] == 7 and summary["n_ignored_samples"] == 1
    text = json.dumps(json_safe(summary), allow_nan=False)
    assert '"d": null' in text


def test_a_class_predicted_but_never_true_scores_zero_f1_and_iou():
    cm = ConfusionMatrix(4)
    cm.update(np.array([0, 3]), np.array([0, 0]))
    assert math.isnan(cm.per_class_accuracy()[3])  # no true sample of class 3
    assert cm.per_class_f1()[3] == 0.0 and cm.per_class_iou()[3] == 0.0  # but its false positive counts
    assert cm.per_class_iou()[0] == pytest.approx(0.5)
    assert cm.mean_iou() == pytest.approx(0.25)  # (0.5 + 0) / 2; classes 1, 2 absent everywhere
    assert cm.average_accuracy() == pytest.approx(0.5)


def test_segmentation_metrics_with_ignored_pixels():
    cm = ConfusionMatrix(2)
    target = torch.tensor([[[0, 255, 1], [1, 1, 255]]])
    prediction = torch.tensor([[[0, 0, 1], [0, 1, 1]]])
    cm.update(prediction, target)
    assert cm.counts.tolist() == [[1, 0], [1, 2]] and int(cm.ignored) == 2
    summary = cm.summary("segmentation", ["x", "y"])
    assert summary["pixel_accuracy"] == pytest.approx(3 / 4)
    assert summary["mean_class_pixel_accuracy"] == pytest.approx((1 + 2 / 3) / 2)
    assert summary["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert summary["per_class_iou"] == {"x": pytest.approx(0.5), "y": pytest.approx(2 / 3)}
    assert summary["n_pixels"] == 4 and summary["n_ignored_pixels"] == 2


def test_accumulating_batches_equals_one_pass_and_never_gives_nan_for_a_class_missing_in_a_batch():
    """The original averaged per-batch recalls: a batch without class 1 gave NaN. Counts do not."""
    whole = ConfusionMatrix(2)
    whole.update(torch.tensor([0, 0, 1, 0]), torch.tensor([0, 0, 1, 1]))
    batched = ConfusionMatrix(2)
    batched.update(torch.tensor([0, 0]), torch.tensor([0, 0]))  # class 1 absent from this batch
    batched.update(torch.tensor([1, 0]), torch.tensor([1, 1]))
    assert torch.equal(whole.matrix, batched.matrix)
    assert batched.average_accuracy() == pytest.approx((1.0 + 0.5) / 2)
    merged = ConfusionMatrix(2).merge(batched)
    assert torch.equal(merged.matrix, whole.matrix)


def test_confusion_matrix_input_checks():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"prediction has 2 values, target 3; they must match"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"target class indices must be in 0..2, got min 0, max 5"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"task must be 'single_label' or 'segmentation'"):
        cm.summary("detection", ["a", "b", "c"])


# ---------------------------------------------------------------------------------------- multi-label
def test_multi_label_f1_matches_hand_computed_values():
    ml = MultiLabelCounts(3)
    target = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
    prediction = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 0], [1, 1, 1]])
    ml.update(prediction, target, valid=torch.tensor([True, True, True, False]))
    # class 0: tp 2 -> F1 1; class 1: tp 1 fp 1 fn 1 -> 0.5; class 2: never true, 1 fp -> 0
    np.testing.assert_allclose(ml.per_class_f1(), [1.0, 0.5, 0.0])
    assert ml.average_f1() == pytest.approx(0.5)
    assert ml.micro_f1() == pytest.approx(6 / 9)  # 2*3 / (2*3 + 2 + 1)
    summary = ml.summary(["a", "b", "c"])
    assert summary["absent_classes"] == ["c"] and summary["n_samples"] == 3 and summary["n_ignored_samples"] == 1


def test_multi_label_class_absent_everywhere_is_nan_and_left_out_of_the_average():
    ml = MultiLabelCounts(3)
    ml.update(np.array([[1, 0, 0], [0, 1, 0]]), np.array([[1, 0, 0], [1, 1, 0]]))
    f1 = ml.per_class_f1()
    assert f1[0] == pytest.approx(2 / 3) and f1[1] == 1.0 and math.isnan(f1[2])
    assert ml.average_f1() == pytest.approx((2 / 3 + 1) / 2)
    with pytest.raises(ValueError, match=r"must hold only 0 and 1 \(threshold probabilities first\)"):
        ml.update(np.array([[0.7, 0, 0]]), np.array([[1, 0, 0]]))
