"""Tests for san.metrics against an independent per-class reference computation."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from san.metrics import ConfusionMatrix, compute_metrics, format_table

K = 12
NAMES = [f"c{i}" for i in range(K)]
IGNORE = 255
ABSENT_PREDICTED = (9, 10)  # never in the ground truth, but predicted
NEVER_SEEN = 11  # neither in the ground truth nor predicted


def _random_pair(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    gt = rng.integers(0, 9, size=(h, w)).astype(np.uint8)  # classes 0..8 only
    gt[rng.random((h, w)) < 0.1] = IGNORE
    pred = gt.astype(np.int64)
    noise = rng.random((h, w)) < 0.4
    pred[noise] = rng.integers(0, 11, size=int(noise.sum()))  # 0..10: includes 9, 10
    pred[rng.random((h, w)) < 0.05] = 255  # unlabeled pseudo-label pixels
    pred[rng.random((h, w)) < 0.01] = -3  # any other out-of-range value is unlabeled too
    return pred.astype(np.int32), gt


def _dataset(seed: int = 0, n: int = 20) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [_random_pair(rng, int(rng.integers(5, 40)), int(rng.integers(5, 40))) for _ in range(n)]


def _reference(pairs, protocol: str) -> dict[str, float]:
    """Straightforward per-class loops with boolean masks, independent of the matrix code."""
    preds = np.concatenate([p.reshape(-1).astype(np.int64) for p, _ in pairs])
    gts = np.concatenate([g.reshape(-1).astype(np.int64) for _, g in pairs])
    valid = gts != IGNORE
    inter, union, gt_n = [], [], []
    for c in range(K):
        g = (gts == c) & valid
        p = (preds == c) & valid
        inter.append(int((g & p).sum()))
        union.append(int((g | p).sum()))
        gt_n.append(int(g.sum()))
    total = int(valid.sum())
    iou, acc = {}, {}
    for c in range(K):
        acc[c] = inter[c] / gt_n[c] if gt_n[c] else math.nan
        if protocol == "detectron2":
            iou[c] = inter[c] / union[c] if gt_n[c] else math.nan
        else:
            iou[c] = inter[c] / union[c] if union[c] else math.nan
    iou_vals = [v for v in iou.values() if not math.isnan(v)]
    acc_vals = [v for v in acc.values() if not math.isnan(v)]
    out = {
        "mIoU": 100 * sum(iou_vals) / len(iou_vals),
        "fwIoU": 100 * sum(gt_n[c] / total * iou[c] for c in range(K) if gt_n[c]),
        "mACC": 100 * sum(acc_vals) / len(acc_vals),
        "pACC": 100 * sum(inter) / total,
    }
    for c in range(K):
        out[f"IoU-{NAMES[c]}"] = 100 * iou[c]
        out[f"ACC-{NAMES[c]}"] = 100 * acc[c]
    return out


def _assert_close(got: dict[str, float], want: dict[str, float]) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        if math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


@pytest.mark.parametrize("protocol", ["detectron2", "mmseg"])
def test_matches_reference(protocol: str) -> None:
    pairs = _dataset()
    cm = ConfusionMatrix(K, ignore_index=IGNORE)
    for pred, gt in pairs:
        cm.update(pred, gt)
    got = compute_metrics(cm.matrix, NAMES, protocol=protocol)
    _assert_close(got, _reference(pairs, protocol))
    assert list(got)[:2] == ["mIoU", "fwIoU"]  # detectron2's key order
    assert math.isnan(got[f"IoU-c{NEVER_SEEN}"]) and math.isnan(got[f"ACC-c{NEVER_SEEN}"])
    for c in ABSENT_PREDICTED:
        assert math.isnan(got[f"ACC-c{c}"])
        if protocol == "detectron2":
            assert math.isnan(got[f"IoU-c{c}"])
        else:
            assert got[f"IoU-c{c}"] == 0.0


def test_protocols_diverge_only_on_iou_of_absent_classes() -> None:
    pairs = _dataset(seed=1)
    cm = ConfusionMatrix(K)
    for pred, gt in pairs:
        cm.update(pred, gt)
    d2 = cm.compute(NAMES, "detectron2")
    mm = cm.compute(NAMES, "mmseg")
    assert mm["mIoU"] < d2["mIoU"]
    for key in ["fwIoU", "mACC", "pACC", *(f"ACC-{n}" for n in NAMES)]:
        assert d2[key] == pytest.approx(mm[key], nan_ok=True)
    # mmseg's mIoU equals detectron2 <= v0.6's rule: sum over gt classes / #classes in gt or pred.
    m = cm.matrix
    present = (m.sum(1) + m[:, :K].sum(0)) > 0
    gt_ious = [d2[f"IoU-{n}"] for n in NAMES if not math.isnan(d2[f"IoU-{n}"])]
    assert mm["mIoU"] == pytest.approx(sum(gt_ious) / present.sum())


def test_unlabeled_predictions_penalise_accuracy() -> None:
    gt = np.zeros((2, 2), dtype=np.uint8)
    cm = ConfusionMatrix(2).update(np.array([[0, 0], [255, 255]]), gt)
    assert cm.matrix.tolist() == [[2, 0, 2], [0, 0, 0]]
    res = compute_metrics(cm.matrix, ["a", "b"])
    assert res["pACC"] == 50.0 and res["ACC-a"] == 50.0 and res["IoU-a"] == 50.0


def test_streaming_and_merge_equal_single_pass() -> None:
    pairs = _dataset(seed=2, n=30)
    per_image = ConfusionMatrix(K)
    for pred, gt in pairs:
        per_image.update(pred, gt)
    one_pass = ConfusionMatrix(K).update(
        np.concatenate([p.reshape(-1) for p, _ in pairs]),
        np.concatenate([g.reshape(-1) for _, g in pairs]),
    )
    first, second = ConfusionMatrix(K), ConfusionMatrix(K)
    for i, (pred, gt) in enumerate(pairs):
        (first if i % 3 else second).update(pred, gt)
    merged = first.merge(second)
    assert per_image.matrix.dtype == np.int64
    assert per_image.matrix.shape == (K, K + 1)
    np.testing.assert_array_equal(per_image.matrix, one_pass.matrix)
    np.testing.assert_array_equal(per_image.matrix, merged.matrix)
    assert int(per_image.matrix.sum()) == sum(int((g != IGNORE).sum()) for _, g in pairs)


def test_hand_made_2x3_example() -> None:
    gt = np.array([[0, 0, 1], [1, 255, 1]], dtype=np.uint8)
    pred = np.array([[0, 1, 1], [255, 0, 2]], dtype=np.uint8)
    cm = ConfusionMatrix(3).update(pred, gt)
    #                          pred: a  b  c  unlabeled
    assert cm.matrix.tolist() == [[1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]]
    names = ["a", "b", "c"]
    d2 = compute_metrics(cm.matrix, names)
    assert d2["IoU-a"] == pytest.approx(50.0) and d2["IoU-b"] == pytest.approx(25.0)
    assert math.isnan(d2["IoU-c"]) and math.isnan(d2["ACC-c"])
    assert d2["mIoU"] == pytest.approx(37.5)
    assert d2["fwIoU"] == pytest.approx(35.0)  # 2/5 * 50 + 3/5 * 25
    assert d2["ACC-a"] == pytest.approx(50.0) and d2["ACC-b"] == pytest.approx(100 / 3)
    assert d2["mACC"] == pytest.approx(125 / 3)
    assert d2["pACC"] == pytest.approx(40.0)
    mm = compute_metrics(cm.matrix, names, protocol="mmseg")
    assert mm["IoU-c"] == 0.0 and mm["mIoU"] == pytest.approx(25.0)
    assert {k: mm[k] for k in ("fwIoU", "mACC", "pACC")} == {k: d2[k] for k in ("fwIoU", "mACC", "pACC")}
    # A square matrix (no unlabeled column) and a ConfusionMatrix are accepted too.
    assert compute_metrics(cm.matrix[:, :3], names)["IoU-a"] == pytest.approx(50.0)
    assert compute_metrics(cm, names)["mIoU"] == d2["mIoU"]
    table = format_table(d2)
    assert "mIoU" in table and "37.50" in table and "nan" in table
    assert all(any(line.startswith(n) for line in table.splitlines()) for n in names)


def test_empty_matrix_is_nan_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = compute_metrics(ConfusionMatrix(3).matrix, ["a", "b", "c"], protocol="mmseg")
    assert all(math.isnan(v) for v in res.values())


def test_shape_mismatch_names_both_shapes() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        cm.update(np.zeros((2, 3), dtype=np.int64), np.zeros((3, 2), dtype=np.int64))


@pytest.mark.parametrize("bad", [3, 7, -1])
def test_ground_truth_out_of_range(bad: int) -> None:
    gt = np.array([[0, bad], [255, 1]])
    with pytest.raises(ValueError, match=rf"outside \[0, 3\).*{bad}"):
        ConfusionMatrix(3).update(np.zeros((2, 2), dtype=np.int64), gt)


def test_other_input_errors() -> None:
    with pytest.raises(TypeError):
        ConfusionMatrix(3).update(np.zeros((2, 2)), np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="ignore_index"):
        ConfusionMatrix(3, ignore_index=1)
    with pytest.raises(ValueError, match="65535"):
        ConfusionMatrix(847)  # 255 is a real class of ADE-847
    assert ConfusionMatrix(847, ignore_index=65535).matrix.shape == (847, 848)
    with pytest.raises(ValueError):
        ConfusionMatrix(3).merge(ConfusionMatrix(4))
    with pytest.raises(ValueError):
        compute_metrics(np.zeros((3, 4), dtype=np.int64), ["a", "b"])
    with pytest.raises(ValueError, match="protocol"):
        compute_metrics(np.zeros((2, 3), dtype=np.int64), ["a", "b"], protocol="voc")
    with pytest.raises(ValueError, match="read-only"):
        ConfusionMatrix(2).matrix[0, 0] = 1
