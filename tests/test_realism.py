"""k-NN realism (Kynkäänniemi et al. 2019): known answers, and a planted fraction of broken digits recovered."""

from __future__ import annotations

import pytest
import torch

from lit_score.data import Digits
from lit_score.metrics import disturbances as D
from lit_score.metrics import fidelity
from lit_score.metrics.image_quality import extract_features
from lit_score.metrics.realism import broken_share, knn_radii, realism, realism_scores

pytestmark = pytest.mark.usefixtures("one_thread")


def test_realism_scores_known_answers_in_one_dimension():
    real = torch.arange(10.0).unsqueeze(1)  # 0, 1, ..., 9: every 1-NN radius is 1
    assert torch.equal(knn_radii(real, k=1), torch.ones(10, dtype=torch.float64))
    fake = torch.tensor([[0.5], [10.5], [20.0]])
    # R = max_r NND_1(r) / |g - r| = 1 / (distance to the nearest real point): 2, 1/1.5, 1/11
    expected = torch.tensor([2.0, 1 / 1.5, 1 / 11], dtype=torch.float64)
    assert torch.allclose(realism_scores(real, fake, k=1), expected)
    assert realism(real, fake, k=1).flagged.tolist() == [False, True, True]


def test_pruning_drops_the_outlier_balls_that_swallow_broken_samples():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0]])  # 1-NN radii 1, 1, 1, 1, 97
    fake = torch.tensor([[50.0]])
    assert realism_scores(real, fake, k=1, prune=0.0).item() == pytest.approx(97 / 50)  # inside the outlier's ball
    assert realism_scores(real, fake, k=1, prune=0.5).item() == pytest.approx(1 / 47)  # the outlier's ball dropped


def test_broken_share_inverts_flagged_equals_b_plus_one_minus_b_times_floor():
    floor, b = 0.08, 0.2
    assert broken_share(b + (1 - b) * floor, floor) == pytest.approx(b)
    assert broken_share(0.01, floor) == 0.0  # below the data's own share: nothing broken


@pytest.fixture(scope="module")
def digits_features():
    """digits-v2 features of 817 reference training digits, images → features, 400 clean digits to break and the
    features of 400 other clean digits (the floor: the data's own flagged share at the same n)."""
    data = Digits(image_size=16)
    x = data.split_tensor("train")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    extractor = fidelity.resolve_feature_extractor("digits-v2")

    def embed(images: torch.Tensor) -> torch.Tensor:
        return extract_features(fidelity.to_uint8(images), extractor)

    return embed(x[order[800:]]), embed, x[order[:400]], embed(x[order[400:800]])


@pytest.mark.parametrize("disturbance", ["pure_noise", "speckle"])
@pytest.mark.parametrize("planted", [0.1, 0.2])
def test_a_planted_fraction_of_broken_samples_is_recovered(digits_features, disturbance, planted):
    reference, embed, clean, other = digits_features
    floor = realism(reference, other).flagged_share  # the data's own flagged share at the same n
    broken = D.disturb(clean, disturbance, planted, seed=5)
    result = realism(reference, embed(broken))
    assert abs(broken_share(result.flagged_share, floor) - planted) <= 0.03
    which = (broken != clean).flatten(1).any(dim=1)  # the planted samples
    assert result.flagged[which].double().mean() >= 0.95  # nearly every planted sample is flagged itself
