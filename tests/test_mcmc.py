"""MCMC kernels against closed-form Gaussian answers; diagnostics against iid and AR(1) traces."""

from __future__ import annotations

import math

import pytest
import torch

from lit_score.metrics.mcmc import effective_sample_size, split_rhat
from lit_score.models import DDPM, EBM
from lit_score.networks import MLP, EnergyMLP
from lit_score.samplers import HMC, MALA, ULA, AnnealedMCMC, Langevin

L = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [-0.3, 0.5, 0.4]])
SIGMA = L @ L.T
A = torch.linalg.inv(SIGMA)


class Gaussian:
    """E(x) = ½ xᵀAx: π_T = N(0, T·A⁻¹), score −Ax."""

    def __init__(self, precision: torch.Tensor = A) -> None:
        self.precision = precision

    def energy(self, x, t=None):
        return 0.5 * ((x @ self.precision) * x).sum(1)

    def __call__(self, x, t=None):
        return -(x @ self.precision)

    def energy_and_score(self, x, t=None):
        return self.energy(x), self(x)


def covariance_tolerance(cov: torch.Tensor, n: int) -> torch.Tensor:
    """4 standard errors of a sample covariance of n independent Gaussian draws: √((Σ_ii Σ_jj + Σ_ij²)/n)."""
    var = torch.diag(cov)
    return 4 * ((var[:, None] * var[None, :] + cov**2) / n).sqrt()


@pytest.mark.parametrize("sampler", [MALA(num_steps=300, step_size=0.1),
                                     HMC(num_steps=100, step_size=0.2, leapfrog_steps=5)], ids=["MALA", "HMC"])
@pytest.mark.parametrize("temperature", [1.0, 0.25])
def test_mala_and_hmc_recover_the_mean_and_covariance_of_a_gaussian(sampler, temperature):
    n = 4000  # independent chains: their final states are independent draws once the chains have mixed
    sampler = sampler.with_settings(temperature=temperature)
    g = torch.Generator().manual_seed(0)
    x, _, measured = sampler.draw(Gaussian(), 3 * torch.randn(n, 3, generator=g), generator=g)
    cov = temperature * SIGMA
    assert (x.mean(0).abs() <= 4 * (torch.diag(cov) / n).sqrt()).all()
    assert ((torch.cov(x.T) - cov).abs() <= covariance_tolerance(cov, n)).all()
    assert 0.3 < measured["acceptance_rate"] <= 1.0


def test_adapted_mala_acceptance_converges_to_0574():
    g = torch.Generator().manual_seed(1)
    for dim in (3, 20):
        precision = torch.diag(torch.linspace(0.5, 4.0, dim))
        sampler = MALA(num_steps=200, step_size=1e-3, adapt_steps=300)
        measured = sampler.draw(Gaussian(precision), torch.randn(2000, dim, generator=g), generator=g).measurements
        assert abs(measured["acceptance_rate"] - 0.574) < 0.03, (dim, measured["acceptance_rate"])
        assert measured["adapted_step_size"] > 1e-2  # moved far from the poor starting step


def test_ula_at_temperature_t_has_the_ar1_stationary_covariance():
    """ULA on E = ½xᵀAx, A diagonal with a_i: x ← (1 − ηa)x + √(2ηT)z has stationary variance T/(a(1 − ηa/2)),
    i.e. T·A⁻¹ only to first order in η; the test tells the two apart."""
    a = torch.tensor([0.5, 2.0, 8.0])
    eta, temperature, n = 0.1, 0.5, 20000
    g = torch.Generator().manual_seed(2)
    x = ULA(num_steps=200, step_size=eta, temperature=temperature)(Gaussian(torch.diag(a)), torch.zeros(n, 3),
                                                                    generator=g)
    exact = temperature / (a * (1 - eta * a / 2))
    var = x.var(0)
    assert ((var - exact).abs() <= 4 * exact * math.sqrt(2 / n)).all()
    assert (var[2] - temperature / a[2]).abs() > 10 * exact[2] * math.sqrt(2 / n)  # the O(η) bias is real


def test_a_langevin_config_is_ula_at_the_matching_temperature():
    langevin = Langevin(num_steps=30, step_size=0.05, noise_scale=0.2, grad_clip=None, clamp=None)
    assert langevin.temperature == pytest.approx(0.2**2 / (2 * 0.05))
    assert Langevin().temperature == pytest.approx(1.25e-6)  # Du & Mordatch's step 10, noise 0.005
    ula = ULA(num_steps=30, step_size=0.05, temperature=langevin.temperature)
    x0 = torch.randn(64, 3, generator=torch.Generator().manual_seed(3))
    a = langevin(Gaussian(), x0, generator=torch.Generator().manual_seed(4))
    b = ula(Gaussian(), x0, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_ula_with_a_target_snr_sets_the_step_per_chain():
    steps = []
    ULA(num_steps=3, snr=0.16)(Gaussian(), torch.randn(8, 3), callback=lambda info: steps.append(info["step_size"]))
    assert len(steps) == 3 and steps[0].shape == (8,) and (steps[0] > 0).all() and not torch.allclose(steps[0],
                                                                                                      steps[0][:1])


def test_bounds_are_the_support_mala_never_leaves_it():
    g = torch.Generator().manual_seed(5)
    x = MALA(num_steps=200, step_size=0.5, bounds=(-0.5, 0.5))(Gaussian(), torch.zeros(2000, 3), generator=g)
    assert x.abs().max() <= 0.5
    # on [−0.5, 0.5]³ a unit-scale Gaussian is nearly flat: the marginals are close to uniform (variance 1/12)
    assert ((x.var(0) - 1 / 12).abs() < 0.02).all()


def test_mala_and_hmc_need_an_energy_and_say_so():
    ebm = EBM(EnergyMLP(data_dim=2), sample_shape=(2,))
    ddpm = DDPM(MLP(data_dim=2), sample_shape=(2,))
    assert ebm.can_use(MALA()) and ebm.can_use(HMC()) and ebm.can_use(ULA())
    assert not ddpm.can_use(MALA()) and "has only a score" in ddpm.sampler_problem(HMC())
    assert ddpm.can_use(ULA())
    x = ebm.sample(16, sampler=MALA(num_steps=5, step_size=0.01, bounds=ebm.data_range),
                   generator=torch.Generator().manual_seed(0))
    assert x.shape == (16, 2) and x.abs().max() <= 1.0


def test_rhat_and_ess_on_iid_and_ar1_traces():
    g = torch.Generator().manual_seed(6)
    iid = torch.randn(4, 2000, generator=g, dtype=torch.float64)
    assert abs(split_rhat(iid) - 1) < 0.01
    assert 0.85 * 8000 < effective_sample_size(iid) < 1.15 * 8000
    rho, n = 0.9, 20000
    z = torch.randn(4, n, generator=g, dtype=torch.float64)
    ar = torch.zeros(4, n, dtype=torch.float64)
    for i in range(1, n):
        ar[:, i] = rho * ar[:, i - 1] + math.sqrt(1 - rho**2) * z[:, i]
    expected = 4 * n * (1 - rho) / (1 + rho)  # τ = (1 + ρ)/(1 − ρ) for AR(1)
    assert 0.8 * expected < effective_sample_size(ar) < 1.2 * expected
    shifted = ar + torch.tensor([0.0, 0.0, 0.0, 3.0], dtype=torch.float64)[:, None]  # one chain elsewhere
    assert split_rhat(shifted) > 1.1


def test_ais_returns_the_exact_log_partition_of_a_gaussian_within_its_interval():
    from lit_score.metrics.ais import ais_log_partition

    dim = 5
    a = torch.linspace(0.5, 4.0, dim)
    exact = 0.5 * dim * math.log(2 * math.pi) - 0.5 * float(torch.log(a).sum())  # log ∫ exp(−½ Σ a_i x_i²) dx
    result = ais_log_partition(lambda x: 0.5 * (x * x * a).sum(1), (dim,), num_chains=256, num_levels=300,
                               generator=torch.Generator().manual_seed(0))
    low, high = result.interval
    assert low <= exact <= high and high - low < 0.1
    assert result.nfe == 301 and result.weights_ess > 100 and 0.4 < result.acceptance < 0.9


def test_ais_agrees_with_quadrature_on_a_2d_ebm():
    """A trained-looking 2-D energy (an MLP with weights ×3, so it is far from flat) on the EBM's box [−3, 3]²."""
    from lit_score.metrics.likelihood import quadrature_log_partition

    torch.manual_seed(0)
    model = EBM(EnergyMLP(2, hidden=32, depth=2), data_range=(-3.0, 3.0), sample_shape=(2,))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
    assert model.likelihood_estimators() == ("quadrature", "ais")
    x = torch.rand(64, 2) * 6 - 3
    generator = torch.Generator().manual_seed(0)
    ais = model.likelihood(x, estimator="ais", generator=generator, num_levels=300)
    quadrature = model.likelihood(x, estimator="quadrature")
    log_z, (low, high) = ais.settings["log_partition"], ais.settings["log_partition_interval"]
    reference, _ = quadrature_log_partition(model.energy, (-3.0, 3.0), 2)
    assert low <= reference <= high
    assert quadrature.settings["log_partition"] == pytest.approx(reference)
    torch.testing.assert_close(ais.nats - quadrature.nats, torch.full_like(ais.nats, log_z - reference))
    assert ais.estimator == "ais" and torch.isfinite(ais.bits_per_dim).all()


# --- annealing over a temperature ladder -----------------------------------------------------------------------
WIDE = torch.tensor([[-1.5, -1.0], [1.5, -1.0], [0.0, 1.5]])  # the oracle mixture's means, widths 0.3 / 0.4 / 0.25


def _mixture_ebm():
    from test_samplers_oracle import MIXTURE

    class MixtureEnergy(torch.nn.Module):
        def forward(self, x, t=None):
            return -MIXTURE.log_prob(x)

    return EBM(MixtureEnergy(), sample_shape=(2,), data_range=(-3.0, 3.0)), MIXTURE


def _mode_fractions(x: torch.Tensor) -> torch.Tensor:
    return torch.bincount(torch.cdist(x, WIDE).argmin(1), minlength=3).double() / x.shape[0]


def test_systematic_resampling_gives_each_chain_its_share_within_one():
    """Systematic resampling's defining property: chain i is copied ⌊B·w_i⌋ or ⌈B·w_i⌉ times."""
    from lit_score.samplers.mcmc import systematic_resample

    log_w = torch.randn(500, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    counts = torch.bincount(systematic_resample(log_w, torch.Generator().manual_seed(1)), minlength=500).double()
    expected = 500 * torch.softmax(log_w, 0)
    assert ((counts - expected).abs() < 1 + 1e-9).all() and counts.sum() == 500


def test_tempered_smc_restores_the_mode_weights_plain_annealing_and_mala_get_wrong():
    """Chains from uniform noise on the box, three separated modes of weights 0.3 / 0.3 / 0.4 and widths
    0.3 / 0.4 / 0.25: MALA (600 steps) keeps the basins' shares of the start and annealing from T = 10 the hot
    density's (the wide mode gains: measured 0.40 and 0.42); reweighting and resampling between the levels gives
    each mode its weight (measured 0.307 / 0.294 / 0.399, 4,000 chains; 0.03 is > 4 standard errors)."""
    model, mixture = _mixture_ebm()
    kernel = MALA(step_size=0.05, adapt_steps=20, bounds=(-3.0, 3.0))
    weights = mixture.weights.double()
    draws = {}
    for name, sampler in {
        "mala": MALA(num_steps=600, step_size=0.05, adapt_steps=20, bounds=(-3.0, 3.0)),
        "annealed": AnnealedMCMC(kernel, ladder="temperature", num_levels=10, steps_per_level=20),
        "smc": AnnealedMCMC(kernel, ladder="temperature", num_levels=10, steps_per_level=20, resample=True),
    }.items():
        drawn = model.draw(4000, sampler=sampler, generator=torch.Generator().manual_seed(1))
        draws[name] = _mode_fractions(drawn.samples)
        if name == "smc":
            assert drawn.measurements["num_resamples"] >= 1 and drawn.nfe == 10 * (1 + 20 + 20)
    assert draws["mala"][1] > 0.36 and draws["annealed"][1] > 0.36
    assert (draws["smc"] - weights).abs().max() < 0.03, draws["smc"]


@pytest.mark.parametrize("kwargs, message", [
    ({"ladder": "noise", "resample": True}, "use ladder temperature"),
    ({"kernel": ULA(), "ladder": "temperature", "resample": True}, "use a MALA or HMC kernel"),
    ({"kernel": MALA(temperature=2.0), "ladder": "temperature", "temperature_max": 1.0}, "below the kernel's"),
    ({"ladder": "energy"}, "unknown ladder"),
    ({"ladder": "temperature", "denoise": True}, "denoise ends a noise ladder"),
])
def test_annealed_mcmc_refuses_settings_that_cannot_work(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AnnealedMCMC(**kwargs)


def test_a_noise_ladder_needs_a_process_and_a_temperature_ladder_runs_without_one():
    model, _ = _mixture_ebm()
    assert model.sampler_problem(AnnealedMCMC(ladder="noise")) is not None
    assert model.sampler_problem(AnnealedMCMC(ladder="temperature")) is None
    assert not AnnealedMCMC(ULA(), ladder="temperature").requires_energy
