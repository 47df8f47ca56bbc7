"""Issue 9's objectives: EDM preconditioning on every process, the log-SNR loss weightings, log-normal σ training."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lit_score.data.mixture import GaussianMixtureDistribution
from lit_score.losses import DenoisingLoss
from lit_score.losses.denoising import lognormal_sigma_time
from lit_score.losses.weighting import LOG_SNR_WEIGHTINGS, eps_weight
from lit_score.processes import EDM, VE, VP, DiscreteVP, Interpolant, SubVP
from lit_score.scores import NetworkScore

PROCESSES = [VP(), SubVP(), VE(), DiscreteVP(), Interpolant(), EDM()]
TARGETS = ["eps", "x0", "v", "score", "velocity", "edm"]


def _times(process, n=5):
    t = torch.linspace(0.1, 0.9, n, dtype=torch.float64)
    return process.discretize(process.t_min + (process.t_max - process.t_min) * t)


def test_preconditioning_is_edm_table_1_for_vp_ve_and_edm():
    """Karras et al. (2022), Table 1: VP (ε-prediction) c_skip = 1, c_out = −σ, c_in = 1/√(σ² + 1), c_noise = 999t;
    VE (NCSN++'s scaled score) 1, σ, 1; EDM σ_d²/(σ² + σ_d²), σσ_d/√(σ² + σ_d²), 1/√(σ² + σ_d²), ¼ ln σ."""
    vp, ve, edm = VP(), VE(), EDM()
    t = torch.tensor([0.01, 0.3, 0.9], dtype=torch.float64)
    sig = vp.sigma(t) / vp.alpha(t)
    c_skip, c_out, c_in = NetworkScore(nn.Identity(), vp, "eps").preconditioning(t)
    torch.testing.assert_close(c_skip, torch.ones_like(t))
    torch.testing.assert_close(c_out, -sig)
    torch.testing.assert_close(c_in, 1 / (sig**2 + 1).sqrt())
    torch.testing.assert_close(vp.c_noise(t), 999 * t)
    t_ve = torch.tensor([0.05, 0.5, 1.0], dtype=torch.float64)
    c_skip, c_out, c_in = NetworkScore(nn.Identity(), ve, "score", scale_by_sigma=True).preconditioning(t_ve)
    torch.testing.assert_close((c_skip, c_out, c_in), (torch.ones_like(t_ve), ve.sigma(t_ve), torch.ones_like(t_ve)))
    sigma = torch.tensor([0.002, 0.5, 80.0], dtype=torch.float64)
    for sd in (0.5, 1.0):
        c_skip, c_out, c_in = NetworkScore(nn.Identity(), edm, "edm", sigma_data=sd).preconditioning(sigma)
        torch.testing.assert_close(c_skip, sd**2 / (sigma**2 + sd**2))
        torch.testing.assert_close(c_out, sigma * sd / (sigma**2 + sd**2).sqrt())
        torch.testing.assert_close(c_in, 1 / (sigma**2 + sd**2).sqrt())
    torch.testing.assert_close(edm.c_noise(sigma), 0.25 * sigma.log())


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
def test_preconditioning_reproduces_predict_and_the_eps_error_scale(target, process):
    """x̂₀ = c_skip·x/α + c_out·F for every target, and ‖raw − target‖² = r·‖ε̂ − ε‖² with r = eps_error_scale."""
    gen = torch.Generator().manual_seed(1)
    x0, noise, out = (torch.randn(5, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    t = _times(process)
    model = NetworkScore(nn.Identity(), process, target, scale_by_sigma=target == "score")
    x = process.perturb(x0, t, noise)
    c_skip, c_out, _ = model.preconditioning(t)
    alpha, sigma = process.alpha(t)[:, None], process.sigma(t)[:, None]
    network_out = out * sigma if target == "score" else out  # raw = F/σ under scale_by_sigma
    x0_hat, eps_hat = model.predict(x, t, out)
    torch.testing.assert_close(x0_hat, c_skip[:, None] * x / alpha + c_out[:, None] * network_out)
    lhs = ((out - model.training_target(x0, noise, t)) ** 2).sum(1)
    torch.testing.assert_close(lhs, model.eps_error_scale(t) * ((eps_hat - noise) ** 2).sum(1))


class MixtureF(nn.Module):
    """The network an ``edm`` model needs to be exact on a mixture: given (c_in·x̃, c_noise) it returns
    F = (E[x₀ | x_t] − c_skip·x̃)/c_out (EDM process: t = σ = exp(4 c_noise))."""

    def __init__(self, mixture, process, sigma_data):
        super().__init__()
        self.noised, self.process, self.sd = mixture.noised(process), process, sigma_data

    def forward(self, x_in, c_noise):
        sigma = (4 * c_noise).exp()
        norm = (sigma**2 + self.sd**2).sqrt()[:, None]
        x = x_in * norm
        x0 = self.noised.denoise(x, sigma)
        c_skip, c_out = self.sd**2 / norm**2, sigma[:, None] * self.sd / norm
        return (x0 - c_skip * x) / c_out


def test_preconditioned_denoiser_is_the_oracle_posterior_mean():
    mixture = GaussianMixtureDistribution.ring(k=4, radius=1.5, std=0.3)
    mixture.means, mixture.stds, mixture.weights = (v.double() for v in (mixture.means, mixture.stds, mixture.weights))
    process = EDM()
    model = NetworkScore(MixtureF(mixture, process, 0.7), process, "edm", sigma_data=0.7)
    gen = torch.Generator().manual_seed(0)
    sigma = torch.tensor([0.01, 0.2, 1.0, 5.0, 50.0], dtype=torch.float64)
    x = process.perturb(mixture.sample(5, generator=gen).double(), sigma, torch.randn(5, 2, generator=gen).double())
    noised = mixture.noised(process)
    torch.testing.assert_close(model.denoise(x, sigma), noised.denoise(x, sigma))
    torch.testing.assert_close(model.score(x, sigma), noised.score(x, sigma))


def test_edm_loss_is_lambda_weighted_denoiser_error():
    """EDM eq. 8: λ(σ)·‖D(x; σ) − x₀‖² with λ = (σ² + σ_d²)/(σσ_d)²; equal to the unit-weight F regression."""
    process, sd = EDM(), 0.5
    model = NetworkScore(nn.Linear(2, 2).double(), process, "edm", sigma_data=sd)
    model.network = _TimeIgnoring(model.network)
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    losses = {}
    for weighting in ("none", "edm"):
        loss = DenoisingLoss(weighting=weighting, reduce="sum")
        losses[weighting] = loss(model, x0, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    sigma = process.sample_time(64, generator=gen).double()
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    x = process.perturb(x0, sigma, noise)
    lam = (sigma**2 + sd**2) / (sigma * sd) ** 2
    expected = lam * ((model.denoise(x, sigma) - x0) ** 2).sum(1)
    torch.testing.assert_close(losses["none"], expected)
    torch.testing.assert_close(losses["edm"], expected)


class _TimeIgnoring(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, c):
        return self.net(x)


def test_each_weighting_matches_its_published_formula_at_three_log_snrs():
    lam = torch.tensor([-2.0, 0.0, 1.5], dtype=torch.float64)
    snr, sigma = (2 * lam).exp(), (-lam).exp()  # SNR = α²/σ², σ̃ = σ/α
    gamma, sd = 5.0, 0.5
    published = {
        "snr": torch.ones(3, dtype=torch.float64),  # L_simple: unit ε-MSE (Ho et al. 2020, eq. 14)
        "snr_plus_one": (snr + 1) / snr,  # x₀-MSE weighted SNR + 1 (Salimans & Ho 2022, sec. 4)
        "min_snr": torch.minimum(snr, torch.tensor(gamma)) / snr,  # Hang et al. 2023, ε-prediction form
        "soft_min_snr": (1 / (1 / snr + 1 / gamma)) / snr,  # Crowson et al. 2024 on x₀, converted by /SNR
        "edm": (sigma**2 + sd**2) / (sigma * sd) ** 2 * sigma**2,  # λ(σ) of EDM eq. 8 on D, ×σ̃² to ε
    }
    assert set(published) == set(LOG_SNR_WEIGHTINGS)
    for name, value in published.items():
        torch.testing.assert_close(eps_weight(name, lam, gamma=gamma, sigma_data=sd), value, msg=name)
    # min-SNR caps at γ: below γ it is L_simple, above it decays as γ/SNR
    assert eps_weight("min_snr", torch.tensor([math.log(gamma) / 2 - 0.1])).item() == pytest.approx(1.0)


def test_weightings_match_k_diffusion_and_v_prediction_on_their_own_targets():
    """Cross-checks on the raw regression: k-diffusion's Denoiser weights its F-space loss by (σσ_d)²/(σ² + σ_d²)²
    ('soft-min-snr', i.e. γ = 1/σ_d²) and σ_d²/(σ² + σ_d²) ('snr'); EDM's is 1 there; v-prediction on VP is
    exactly SNR + 1; ε-prediction is exactly 'snr'."""
    sigma = torch.tensor([0.05, 0.5, 3.0], dtype=torch.float64)
    sd = 0.5
    edm_model = NetworkScore(nn.Identity(), EDM(), "edm", sigma_data=sd)
    w = lambda name, model, t, **kw: DenoisingLoss(weighting=name, **kw).weight(model, t)  # noqa: E731
    torch.testing.assert_close(w("soft_min_snr", edm_model, sigma, gamma=1 / sd**2),
                               (sigma * sd) ** 2 / (sigma**2 + sd**2) ** 2)
    torch.testing.assert_close(w("snr", edm_model, sigma), sd**2 / (sigma**2 + sd**2))
    torch.testing.assert_close(w("edm", edm_model, sigma), torch.ones_like(sigma))
    t = torch.tensor([0.05, 0.4, 0.9], dtype=torch.float64)
    torch.testing.assert_close(w("snr_plus_one", NetworkScore(nn.Identity(), VP(), "v"), t), torch.ones_like(t))
    torch.testing.assert_close(w("snr", NetworkScore(nn.Identity(), VP(), "eps"), t), torch.ones_like(t))


def test_lognormal_time_sampling_is_edms_truncated_to_the_process():
    gen = torch.Generator().manual_seed(0)
    t = lognormal_sigma_time(EDM(), 200_000, -1.2, 1.2, gen)  # [0.002, 80]: truncation at ±4.2 / 4.7 std
    log_sigma = t.log()
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.01)
    assert log_sigma.std().item() == pytest.approx(1.2, abs=0.01)
    vp = VP()  # σ̃ ∈ [0.016, 148] here: the left tail is cut at ln 0.016 = −4.1; check the truncated CDF there
    t = lognormal_sigma_time(vp, 200_000, -1.2, 1.2, torch.Generator().manual_seed(1))
    assert t.min() >= vp.t_min and t.max() <= vp.t_max
    log_sigma = -vp.log_snr(t.double())
    lo = -vp.log_snr(torch.tensor(vp.t_min, dtype=torch.float64))
    cdf = lambda v: torch.special.ndtr((torch.as_tensor(v, dtype=torch.float64) + 1.2) / 1.2)  # noqa: E731
    for q in (-3.5, -1.2, 0.5):
        expected = (cdf(q) - cdf(lo)) / (1 - cdf(lo))
        assert (log_sigma <= q).double().mean().item() == pytest.approx(expected.item(), abs=0.005)
    # a discrete process gets its grid's times
    dvp = DiscreteVP()
    t = lognormal_sigma_time(dvp, 1000, -1.2, 1.2, torch.Generator().manual_seed(2))
    torch.testing.assert_close(t, dvp.discretize(t))


def test_denoising_loss_refuses_bad_weighting_options():
    with pytest.raises(ValueError, match="unknown weighting 'p2'"):
        DenoisingLoss(weighting="p2")
    with pytest.raises(ValueError, match="gamma"):
        DenoisingLoss(weighting="min_snr", gamma=0.0)
    with pytest.raises(ValueError, match="time_sampling"):
        DenoisingLoss(weighting="likelihood", importance_sampling=True, time_sampling="lognormal")
