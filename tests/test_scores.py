"""The score boundary: parameterisation round trips and the energy → score helper."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_score.processes import EDM, VE, VP, DiscreteVP, Interpolant, SubVP
from lit_score.scores import EnergyScore, NetworkScore


class Oracle(nn.Module):
    """A 'network' whose output is exactly the training target for a stored (x0, noise) pair."""

    def __init__(self, x0, noise, t):
        super().__init__()
        self.x0, self.noise, self.t = x0, noise, t
        self.score_model: NetworkScore | None = None

    def forward(self, x, c_noise):
        return self.score_model.training_target(self.x0, self.noise, self.t)


@pytest.mark.parametrize("target", ["eps", "x0", "v", "score", "velocity", "edm"])
@pytest.mark.parametrize("process", [VP(), SubVP(), VE(), DiscreteVP(), Interpolant(), EDM()],
                         ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("shape", [(4, 2), (4, 1, 3, 3)])
def test_parameterisations_round_trip(target, process, shape):
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(shape, generator=gen, dtype=torch.float64), torch.randn(shape, generator=gen).double()
    t = torch.tensor([0.05, 0.3, 0.6, 0.9], dtype=torch.float64)
    net = Oracle(x0, noise, t)
    model = NetworkScore(net, process, target)
    net.score_model = model
    x = process.perturb(x0, t, noise)
    x0_hat, eps_hat = model.predict(x, t)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, noise)
    sigma = process.sigma(t).reshape(-1, *[1] * (len(shape) - 1))
    torch.testing.assert_close(model.score(x, t), -noise / sigma)
    alpha_dot = process.alpha_dot(t).reshape(sigma.shape)
    torch.testing.assert_close(model.velocity(x, t), alpha_dot * x0 + process.sigma_dot(t).reshape(sigma.shape) * noise)


def test_scale_by_sigma_divides_the_score_output():
    process = VE()
    net = lambda x, c: torch.ones_like(x)  # noqa: E731
    model = NetworkScore(net, process, "score", scale_by_sigma=True)
    t = torch.tensor([0.2, 0.8])
    torch.testing.assert_close(model.score(torch.zeros(2, 3), t), 1 / process.sigma(t)[:, None].expand(2, 3))
    with pytest.raises(ValueError, match="scale_by_sigma"):
        NetworkScore(net, process, "eps", scale_by_sigma=True)


class Quadratic(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.a = a

    def forward(self, x, t=None):
        return 0.5 * torch.einsum("bi,ij,bj->b", x, self.a, x)


def test_energy_score_of_a_quadratic_is_minus_ax():
    a = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    x = torch.randn(6, 2)
    score = EnergyScore(Quadratic(a))
    torch.testing.assert_close(score(x), -x @ a.T)
    with torch.inference_mode():  # trainer.validate/test run under inference_mode
        torch.testing.assert_close(score(x), -x @ a.T)
    with torch.no_grad():
        torch.testing.assert_close(score(x), -x @ a.T)
    assert score.energy(x).shape == (6,)


def test_energy_score_create_graph_lets_a_loss_backpropagate():
    a = nn.Parameter(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
    score = EnergyScore(Quadratic(a), create_graph=True)
    x = torch.randn(5, 2)
    (score(x) ** 2).sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
