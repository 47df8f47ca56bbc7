"""Floors at the same n and reference, half-sampling standard errors, ties, and their place in evaluate and compare."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lit_score.data import Digits
from lit_score.evaluation.compare import Compare
from lit_score.evaluation.evaluate import evaluate
from lit_score.evaluation.report import table
from lit_score.metrics import disturbances as D
from lit_score.metrics.image_quality import (
    ReferenceStatistics,
    feature_metrics,
    floor_plan,
    half_sample_errors,
    is_tie,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_floor_plan_uses_the_held_out_split_when_it_has_n_images():
    plan = floor_plan(100, 1617, 180, seed=0)
    assert plan.scheme == "held-out split" and plan.floor_split == "held_out"
    assert len(plan.floor_index) == 100 and len(set(plan.floor_index.tolist())) == 100
    assert torch.equal(plan.reference_index, torch.arange(1617))


def test_floor_plan_cuts_the_reference_when_the_held_out_split_is_too_small():
    plan = floor_plan(500, 1617, 180, seed=0)
    floor, reference = set(plan.floor_index.tolist()), set(plan.reference_index.tolist())
    assert plan.scheme == "reference subsample" and len(floor) == 500 and len(reference) == 1117
    assert not floor & reference and floor | reference == set(range(1617))  # disjoint, together the whole split
    assert not torch.equal(plan.floor_index, floor_plan(500, 1617, 180, seed=1).floor_index)  # one cut per seed
    assert floor_plan(1616, 1617, 180, seed=0).scheme == "none"  # no n images beside a reference of 2


def test_half_sampling_error_matches_the_spread_over_independent_draws():
    # Gaussian features, two distributions a mean shift apart: the standard deviation of FID over 40 independent
    # sample sets of n is the true standard error; half-sampling one set must estimate it within a factor 1.6.
    generator = torch.Generator().manual_seed(0)
    dim, n = 8, 400
    reference = torch.randn(2000, dim, generator=generator, dtype=torch.float64)
    draw = lambda: torch.randn(n, dim, generator=generator, dtype=torch.float64) + 0.3  # noqa: E731
    spread = np.std([feature_metrics(draw(), reference, ("fid",), kid_subset_size=n)["fid"] for _ in range(40)],
                    ddof=1)
    estimate = half_sample_errors(draw(), reference, ("fid",), num=40, seed=1)["fid"]
    assert spread / 1.6 < estimate < spread * 1.6


def test_reference_statistics_equal_torch_fidelitys_fid_and_precision_recall():
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(300, 16, generator=generator)
    samples = 0.8 * torch.randn(120, 16, generator=generator) + 0.2
    stats = ReferenceStatistics(reference)
    expected = feature_metrics(samples, reference, ("fid", "prc"), kid_subset_size=100)
    assert stats.fid(samples) == pytest.approx(expected["fid"], rel=1e-6)  # torch-fidelity: float32 features
    few = samples[:10]  # fewer samples than dimensions: the m x m form
    expected_few = feature_metrics(few, reference, ("fid",), kid_subset_size=5)["fid"]
    assert stats.fid(few) == pytest.approx(expected_few, rel=1e-6)
    assert stats.precision_recall(samples) == (pytest.approx(expected["precision"]), pytest.approx(expected["recall"]))


def test_ties_are_differences_below_the_combined_error():
    # the README's objectives, 0.83 FID apart (3.75 vs 4.58): a tie when the combined error exceeds 0.83
    assert math.sqrt(0.5**2 + 0.7**2) > 0.83 and is_tie(3.75, 0.5, 4.58, 0.7)
    assert math.sqrt(0.5**2 + 0.6**2) < 0.83 and not is_tie(3.75, 0.5, 4.58, 0.6)
    assert not is_tie(3.75, None, 4.58, 0.3)  # no error bar: no claim of a tie


@pytest.fixture(scope="module")
def evaluated():
    """evaluate() of two seed sets of 300 'samples' (the 180 held-out digits, 120 of them twice; 20 % replaced by noise
    images): n > 180 held-out images, so the floor cuts the reference."""
    data = Digits(image_size=16)
    x = data.split_tensor("test")
    sets = [D.disturb(torch.cat([x, x[:120]]), "pure_noise", 0.2, seed=s) for s in (0, 1)]
    return evaluate(None, data, samples=sets, seeds=[0, 1], metrics=["fid", "kid", "prc"], kid_subset_size=100,
                    half_samples=5, progress=False)


def test_evaluate_puts_the_floor_at_the_same_n_and_reference(evaluated):
    p = evaluated.protocol
    plans = p["floor"]["plans"]
    assert [plan["scheme"] for plan in plans] == ["reference subsample"] * 2
    assert all(plan["num_floor"] == 300 and plan["num_reference"] == 1617 - 300 for plan in plans)
    assert p["reference"]["num_samples"] == 1317 and p["image_metrics"]["num_reference"] == 1317
    fid = evaluated.metrics["fid"]
    assert 0 < fid["floor"] < fid["mean"] and fid["floor_sem"] > 0
    assert fid["sem"] > 0 and fid["sem_from"] == "half-sampling"  # two seed sets: too few for a std over seeds
    assert {"precision", "recall", "kid"} <= {k for k, s in evaluated.metrics.items() if "sem" in s}
    # 20 % noise images among clean digits: the realism estimate of the broken share finds them
    assert abs(evaluated.metrics["broken_share"]["mean"] - 0.2) < 0.05


def test_compare_data_row_is_the_floor_and_the_report_marks_ties(evaluated):
    row = {"run": "m", "family": "DDPM", "sampler_label": "default", "status": "ok", "metrics": evaluated.metrics,
           "protocol": evaluated.protocol, "nfe": 1, "data_is_image": True}
    floor = Compare.data_floor([row])
    assert floor["family"] == "data" and "reference subsample" in floor["run"] and "n=300" in floor["run"]
    assert floor["metrics"]["fid"]["mean"] == evaluated.metrics["fid"]["floor"]
    twin = {**row, "run": "twin", "metrics": {**evaluated.metrics, "fid": {**evaluated.metrics["fid"],
                                                                          "mean": evaluated.metrics["fid"]["mean"]
                                                                          + 0.1 * evaluated.metrics["fid"]["sem"]}}}
    headings, cells = table([row, twin, floor])
    column = headings.index("FID ↓")
    assert "(best)" in cells[0][column] and "(tie)" in cells[1][column] and "±" in cells[2][column]
