"""The sample estimate (san/sample_estimate.py): its metrics are compute_metrics', and over simulated runs whose
true mIoU and pACC are known, its 95% intervals cover the truth about 95% of the time."""

from __future__ import annotations

import numpy as np
import pytest

from san.metrics import compute_metrics
from san.sample_estimate import image_counts, sample_estimate, summary_metrics

K = 6


def _population(rng: np.random.Generator, images: int) -> np.ndarray:
    """Per-image ``[K, K + 1]`` confusion matrices of a simulated run: each image shows some of the classes, in
    varied amounts, and is labeled well or badly (an image-wide quality times a per-class one); wrong pixels go to
    another class or stay unlabeled."""
    present = rng.random((images, K)) < 0.5
    present[np.arange(images), rng.integers(0, K, images)] = True
    pixels = np.where(present, rng.lognormal(7, 1, (images, K)).astype(np.int64) + 1, 0)
    quality = rng.beta(4, 2, (images, 1)) * np.linspace(0.6, 1.0, K)
    pvals = rng.dirichlet(np.ones(K + 1), (images, K)) * (1 - quality)[..., None]
    pvals[:, np.arange(K), np.arange(K)] += quality
    return rng.multinomial(pixels, pvals / pvals.sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("protocol", ["detectron2", "mmseg"])
def test_summary_metrics_are_compute_metrics(protocol: str) -> None:
    matrices = _population(np.random.default_rng(0), 40)
    matrices[:, 2, :] = 0  # a class absent from the ground truth (its IoU counts under mmseg only)
    summed = matrices.sum(axis=0)
    counts = np.stack([image_counts(m) for m in matrices]).sum(axis=0)
    miou, pacc = summary_metrics(counts, protocol)
    expected = compute_metrics(summed, [f"c{i}" for i in range(K)], protocol)
    assert miou == pytest.approx(expected["mIoU"], abs=1e-9)
    assert pacc == pytest.approx(expected["pACC"], abs=1e-9)


def test_interval_covers_the_true_value_about_95_percent_of_the_time() -> None:
    """200 samples of 200 images (different seeds) from a run of 20,000 images whose mIoU and pACC are computed
    over all of them: each 95% interval covers the truth between 90% and 98% of the time."""
    rng = np.random.default_rng(1)
    population = np.stack([image_counts(m) for m in _population(rng, 20_000)])
    true_miou, true_pacc = summary_metrics(population.sum(axis=0))
    covered = {"mIoU": 0, "pACC": 0}
    widths = []
    for seed in range(200):
        sample = population[np.random.default_rng(1000 + seed).choice(len(population), 200, replace=False)]
        estimate = sample_estimate(sample, resamples=1000, seed=seed)
        for name, truth in (("mIoU", true_miou), ("pACC", true_pacc)):
            covered[name] += estimate[name]["low"] <= truth <= estimate[name]["high"]
        widths.append(estimate["mIoU"]["high"] - estimate["mIoU"]["low"])
    assert 180 <= covered["mIoU"] <= 196, covered
    assert 180 <= covered["pACC"] <= 196, covered
    assert 0 < np.mean(widths) < 20  # an interval, not everything


def test_seeded_resamples_and_the_sample_value() -> None:
    counts = np.stack([image_counts(m) for m in _population(np.random.default_rng(2), 30)])
    first, again = sample_estimate(counts, seed=3), sample_estimate(counts, seed=3)
    assert first == again and sample_estimate(counts, seed=4) != first
    miou, pacc = summary_metrics(counts.sum(axis=0))
    assert first["mIoU"]["estimate"] == miou and first["pACC"]["estimate"] == pacc
    assert first["mIoU"]["low"] < miou < first["mIoU"]["high"]
    assert (first["resamples"], first["seed"], first["confidence"]) == (1000, 3, 0.95)
    with pytest.raises(ValueError, match="at least 2 images"):
        sample_estimate(counts[:1])
