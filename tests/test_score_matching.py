"""Exact and sliced score matching recover known scores (Hyvärinen 2005; Song et al. 2019)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_score.data.mixture import GaussianMixtureDistribution
from lit_score.losses import ExactScoreMatching, SlicedScoreMatching
from lit_score.networks import MLP
from lit_score.processes import VE
from lit_score.scores import NetworkScore

pytestmark = pytest.mark.usefixtures("one_thread")



class LinearScore(nn.Module):
    """s(x, t) = A x + b: the exact score family of a Gaussian."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.zeros(dim, dim, dtype=torch.float64))
        self.b = nn.Parameter(torch.zeros(dim, dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x @ self.A.T + self.b


def _gaussian_data(n: int = 512) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    chol = torch.tensor([[1.0, 0.0], [0.6, 0.5]], dtype=torch.float64)
    return torch.randn(n, 2, generator=g, dtype=torch.float64) @ chol.T + torch.tensor([1.0, -2.0], dtype=torch.float64)


def _optimum(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimiser of the empirical objective mean ½‖Ax + b‖² + tr A: ∂b ⇒ b = −A m, ∂A ⇒ A S + I = 0 (S the 1/n
    covariance), so A = −S⁻¹, b = S⁻¹ m — the Gaussian fitted by maximum likelihood."""
    m = x.mean(0)
    cov = (x - m).T @ (x - m) / len(x)
    prec = torch.linalg.inv(cov)
    return -prec, prec @ m


def _fit(loss_fn, x: torch.Tensor) -> LinearScore:
    """Minimise the loss over a linear score by L-BFGS; random projections are re-drawn identically every call, so
    the objective is deterministic (for SSM: a fixed set of directions, whose mean vvᵀ is I up to ~1/√(n·M))."""
    model = LinearScore(2)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn(model, x, generator=torch.Generator().manual_seed(1)).mean()
        loss.backward()
        return loss

    opt.step(closure)
    return model


def test_exact_score_matching_recovers_gaussian_score():
    x = _gaussian_data()
    model = _fit(ExactScoreMatching(), x)
    a, b = _optimum(x)
    assert torch.allclose(model.A, a, atol=1e-6) and torch.allclose(model.b, b, atol=1e-6)


@pytest.mark.parametrize(("distribution", "variance_reduced"), [("gaussian", True), ("rademacher", False)])
def test_sliced_score_matching_recovers_gaussian_score(distribution, variance_reduced):
    x = _gaussian_data()
    loss_fn = SlicedScoreMatching(num_projections=32, distribution=distribution, variance_reduced=variance_reduced)
    model = _fit(loss_fn, x)
    a, b = _optimum(x)
    assert (model.A - a).abs().max() < 0.05 * a.abs().max()
    assert (model.b - b).abs().max() < 0.05 * b.abs().max()


def test_sliced_is_unbiased_for_exact():
    """Averaged over many projections, SSM (both forms and distributions) equals ESM per sample (nonlinear score)."""
    torch.manual_seed(0)
    model = NetworkScore(MLP(3, hidden=16, depth=1), VE(), target="score").double()
    x = torch.randn(8, 3, dtype=torch.float64)
    exact = ExactScoreMatching()(model, x)
    for distribution in ("gaussian", "rademacher"):
        for vr in (True, False):
            sliced = SlicedScoreMatching(4000, distribution, vr)(model, x, generator=torch.Generator().manual_seed(2))
            assert torch.allclose(sliced, exact, atol=0.05 * exact.abs().max().item()), (distribution, vr)


def test_losses_backpropagate_and_run_without_grad():
    model = NetworkScore(MLP(2, hidden=8, depth=1), VE(), target="score")
    x = torch.randn(4, 2)
    for loss_fn in (ExactScoreMatching(), SlicedScoreMatching(), SlicedScoreMatching(perturb=True, t=0.3)):
        loss_fn(model, x).mean().backward()
        assert all(p.grad is not None for p in model.parameters())
        model.zero_grad()
        with torch.no_grad():
            assert loss_fn(model, x).shape == (4,)
        with torch.inference_mode():
            assert torch.isfinite(loss_fn(model, x)).all()


def test_exact_score_matching_refuses_high_dimension():
    model = NetworkScore(MLP(65, hidden=8, depth=1), VE(), target="score")
    with pytest.raises(ValueError, match="SlicedScoreMatching"):
        ExactScoreMatching()(model, torch.randn(2, 65))


@pytest.mark.parametrize("loss_fn", [SlicedScoreMatching(num_projections=1), ExactScoreMatching()])
def test_mlp_score_learns_mixture(loss_fn):
    """A small MLP trained for 300 steps on clean mixture samples: its score error falls far below the init's."""
    torch.manual_seed(0)
    mixture = GaussianMixtureDistribution(torch.tensor([[-1.0, 0.0], [1.0, 0.5]]), torch.tensor([0.5, 0.4]),
                                          torch.tensor([0.5, 0.5]))
    model = NetworkScore(MLP(2, hidden=64, depth=2), VE(), target="score")
    g = torch.Generator().manual_seed(0)
    test = mixture.sample(2000, g)
    t = torch.full((len(test),), model.process.t_min)

    def error() -> float:
        with torch.no_grad():
            return ((model.score(test, t) - mixture.score(test)) ** 2).sum(1).mean().item()

    before = error()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        opt.zero_grad()
        loss_fn(model, mixture.sample(256, g), generator=g).mean().backward()
        opt.step()
    after = error()
    assert after < 0.1 * before, (before, after)


class _MixtureScoreNet(nn.Module):
    """A VE 'network' (target score, conditioned on c_noise = log σ) returning the noised mixture's exact score plus
    ``delta``·tanh(x)/σ: a score whose weighted error σ²‖s − s*‖² = delta²‖tanh x‖² is known at every level."""

    def __init__(self, mixture, process, delta: float) -> None:
        super().__init__()
        self.noised, self.process, self.delta = mixture.noised(process), process, delta

    def forward(self, x, c_noise):
        t = self.process.t_from_log_snr(-c_noise)
        return self.noised.score(x, t) + self.delta * torch.tanh(x) / c_noise.exp()[:, None]


@pytest.mark.parametrize("loss_fn", [SlicedScoreMatching(num_projections=4, anneal=True),
                                     ExactScoreMatching(anneal=True)], ids=["SSM", "ESM"])
def test_annealed_score_matching_is_dsm_up_to_a_constant(loss_fn):
    """E_t σ²·SSM(s) = ½ E_t σ²‖s − s_t*‖² + const, and DSM (λ = σ², sum) = E_t σ²‖s − s_t*‖² + const': between a
    score and the exact one the annealed SSM / ESM difference is ½ E σ²‖s − s*‖² = ½ delta² E‖tanh x_t‖² and half
    DSM's difference (Monte Carlo over 20,000 samples, common random numbers)."""
    from lit_score.losses import DenoisingLoss

    mixture = GaussianMixtureDistribution(torch.tensor([[-1.0, 0.0], [1.0, 0.5]], dtype=torch.float64),
                                          torch.tensor([0.5, 0.4], dtype=torch.float64),
                                          torch.tensor([0.5, 0.5], dtype=torch.float64))
    process = VE(sigma_min=0.05, sigma_max=5.0)
    x0 = mixture.sample(20000, torch.Generator().manual_seed(0))
    exact, off = (NetworkScore(_MixtureScoreNet(mixture, process, d), process, "score") for d in (0.0, 0.5))
    dsm = DenoisingLoss(weighting="sigma2", reduce="sum")
    diff = {}
    for name, fn in (("sm", loss_fn), ("dsm", dsm)):
        values = [fn(m, x0, generator=torch.Generator().manual_seed(1)).detach() for m in (off, exact)]
        d = values[0] - values[1]
        diff[name] = (d.mean().item(), d.std().item() / len(d) ** 0.5)
    gen = torch.Generator().manual_seed(1)  # the same t and noise as the losses drew: the analytic term on them
    t = process.sample_time(len(x0), generator=gen).double()
    x_t = process.perturb(x0, t, torch.randn(x0.shape, generator=gen, dtype=torch.float64))
    analytic = 0.5 * 0.5**2 * torch.tanh(x_t).pow(2).sum(1).mean().item()
    assert diff["sm"][0] == pytest.approx(analytic, abs=4 * diff["sm"][1] + 1e-3), (diff, analytic)
    assert diff["sm"][0] == pytest.approx(0.5 * diff["dsm"][0], abs=4 * (diff["sm"][1] + diff["dsm"][1])), diff


def test_annealed_score_matching_refuses_a_fixed_time():
    with pytest.raises(ValueError, match="anneal draws t"):
        SlicedScoreMatching(anneal=True, t=0.3)
    with pytest.raises(ValueError, match="anneal draws t"):
        ExactScoreMatching(anneal=True, perturb=True)
