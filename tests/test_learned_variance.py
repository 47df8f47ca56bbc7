"""improved DDPM's learned variance (issue 9): the learned_range parameterisation on any respaced grid, the hybrid
loss's bound term against closed forms, and what its minimiser is where the reverse process is known exactly.

Two data distributions make the true reverse step p(x_{n−1} | x_n) Gaussian with a known variance (Ho et al. 2020,
sec. 3.2): a point mass x₀ = c (posterior δ_c, so p = q(x_{n−1} | x_n, c): variance β̃_n) and x₀ ~ N(0, I) (all
marginals N(0, I): variance β_n). In general the optimal variance is β̃_n + c_n²·Var[x₀ | x_n] with c_n the x₀
coefficient of μ̃, which is β̃_n and, using Var[x₀ | x_n] = 1 − ᾱ_n, exactly β_n in those two cases.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lit_score.losses import HybridLoss
from lit_score.metrics.likelihood import ddpm_vlb
from lit_score.models import DDPM
from lit_score.networks import MLP
from lit_score.processes import DiscreteVP
from lit_score.samplers import Ancestral
from lit_score.samplers.ancestral import learned_range_variance, transition_variances
from lit_score.scores import NetworkScore

N = 20


class OracleWithVariance(nn.Module):
    """ε of the exact posterior mean for a point mass at ``c`` (``c`` given) or for N(0, I) data (``c`` None), and a
    variance output v per timestep (a parameter: v = 2f − 1)."""

    def __init__(self, process: DiscreteVP, dim: int, c: torch.Tensor | None, frac: float = 0.5) -> None:
        super().__init__()
        self.process, self.c = process, c
        self.v = nn.Parameter(torch.full((process.num_timesteps + 1,), 2 * frac - 1, dtype=torch.float64))

    def forward(self, x, c_noise):
        n = (c_noise + 1).round().long()
        t = n.to(x.dtype) / self.process.num_timesteps
        alpha, sigma = self.process.alpha(t)[:, None], self.process.sigma(t)[:, None]
        eps = sigma * x if self.c is None else (x - alpha * self.c) / sigma  # E[x₀|x_t] = α x_t for N(0, I)
        return torch.cat([eps, self.v[n][:, None].expand_as(x)], dim=1)


def _model(c, dim=3, frac=0.5):
    process = DiscreteVP(num_timesteps=N, beta_start=1e-3, beta_end=0.2).double()
    return NetworkScore(OracleWithVariance(process, dim, c, frac), process, "eps", learned_variance=True), process


def test_learned_range_is_respaced_beta_and_beta_tilde():
    """On a respaced grid (iDDPM's respacing: β' = 1 − ᾱ_t/ᾱ_s, β̃' = β'(1 − ᾱ_s)/(1 − ᾱ_t) from the table)
    f = 0 gives β̃', f = 1 gives β', f = ½ their geometric mean."""
    process = DiscreteVP()
    abar = process.alphas_cumprod.double()
    for n_t, n_s in ((1000, 750), (500, 480), (40, 1)):
        t, s = torch.tensor([n_t / 1000.0]), torch.tensor([n_s / 1000.0])
        _, sigma_ts2, beta_tilde = transition_variances(process, t.double(), s.double())
        beta_resp = 1 - abar[n_t - 1] / abar[n_s - 1]
        beta_tilde_resp = beta_resp * (1 - abar[n_s - 1]) / (1 - abar[n_t - 1])
        frac = torch.tensor([[0.0, 1.0, 0.5]], dtype=torch.float64)
        var = learned_range_variance(frac, sigma_ts2, beta_tilde)[0]
        torch.testing.assert_close(var, torch.stack([beta_tilde_resp, beta_resp,
                                                     (beta_resp * beta_tilde_resp).sqrt()]).reshape(3))


def test_the_ancestral_sampler_uses_the_learned_variance_on_a_respaced_grid():
    """A learned variance with f = 1 everywhere is Ancestral(variance='beta') and f = 0 is 'beta_tilde', on a
    50-step respacing of the chain; one network evaluation per step either way."""
    c = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    for frac, fixed in ((1.0, "beta"), (0.0, "beta_tilde")):
        model, process = _model(c, frac=frac)
        x = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        learned = Ancestral(num_steps=10, denoise=False)
        out, nfe, _ = learned.draw(model, x.clone(), process, generator=torch.Generator().manual_seed(1))
        ref = Ancestral(num_steps=10, denoise=False, variance=fixed)(
            model, x.clone(), process, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(out, ref)
        assert nfe == 10
    with pytest.raises(ValueError, match="learned variance"):
        Ancestral(variance="learned")(lambda x, t: -x, torch.zeros(2, 3), DiscreteVP())


@pytest.mark.parametrize("case", ["point_mass", "gaussian"])
def test_vlb_of_the_true_reverse_process_is_analytic(case):
    """With the exact posterior mean and the optimal variance (β̃ for the point mass, β for N(0, I)) every KL term
    is 0 exactly (point mass) or ½·log(β_n/β̃_n) nats per dim in expectation (N(0, I)); ddpm_vlb and the hybrid
    loss's term give those numbers."""
    dim, batch = 3, 4000
    c = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64) if case == "point_mass" else None
    model, process = _model(c, dim, frac=0.0 if c is not None else 1.0)
    gen = torch.Generator().manual_seed(0)
    x0 = c.expand(batch, dim).clone() if c is not None else torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    result = ddpm_vlb(model, process, x0, variance="learned", clip_denoised=False, generator=gen)
    n = torch.arange(2, N + 1)
    _, beta, beta_tilde = transition_variances(process, n.double() / N, (n.double() - 1) / N)
    kl_gauss = 0.5 * (beta / beta_tilde).log() / math.log(2)
    expected = torch.zeros(N - 1, dtype=torch.float64) if c is not None else kl_gauss
    terms = result.terms[:, 1:]
    se = terms.std(0) / batch**0.5
    assert ((terms.mean(0) - expected).abs() <= 4 * se + 1e-9).all(), (terms.mean(0), expected)
    # the hybrid loss's own term at a drawn n agrees with the same closed form
    hybrid = HybridLoss(decoder="gaussian")
    _, vlb = hybrid.terms(model, x0, generator=torch.Generator().manual_seed(1))
    t = process.sample_time(batch, generator=torch.Generator().manual_seed(1)).double()
    drawn = (t * N).round().long()
    rows = drawn >= 2
    want = expected[drawn[rows] - 2]
    assert (vlb[rows] - want).mean().abs() <= 4 * (vlb[rows] - want).std() / rows.sum() ** 0.5 + 1e-9


@pytest.mark.parametrize(("case", "optimum"), [("point_mass", 0.0), ("gaussian", 1.0)])
def test_hybrid_loss_learns_the_optimal_interpolation(case, optimum):
    """Only the variance is free (the oracle's mean, stop-gradient in L_vlb): minimising the hybrid loss drives the
    interpolation fraction to 0 (β̃, the point mass) or 1 (β, N(0, I)) at every n ≥ 2."""
    dim, batch = 3, 2048
    c = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64) if case == "point_mass" else None
    model, process = _model(c, dim, frac=0.5)
    opt = torch.optim.Adam([model.network.v], lr=0.05)
    gen = torch.Generator().manual_seed(0)
    loss_fn = HybridLoss(decoder="gaussian")
    for _ in range(300):
        x0 = c.expand(batch, dim).clone() if c is not None else torch.randn(batch, dim, generator=gen,
                                                                              dtype=torch.float64)
        opt.zero_grad()
        loss_fn(model, x0, generator=gen).mean().backward()
        opt.step()
    frac = (model.network.v.detach() + 1) / 2
    assert (frac[2:] - optimum).abs().max() < 0.1, frac


def test_ddpm_with_a_learned_variance_checks_its_network_and_samples_with_it():
    net = MLP(data_dim=2, hidden=16, depth=1, out_dim=4)
    model = DDPM(net, process=DiscreteVP(num_timesteps=10), learned_variance=True, loss=HybridLoss(decoder="gaussian"),
                 sample_shape=(2,))
    model.setup("fit")
    loss = model.loss(model.score_model, torch.randn(8, 2)).mean()
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in net.parameters())
    assert model.sample(5).shape == (5, 2)
    with pytest.raises(ValueError, match="twice the data's"):
        DDPM(MLP(data_dim=2, hidden=16, depth=1), process=DiscreteVP(num_timesteps=10), learned_variance=True,
             loss=HybridLoss(), sample_shape=(2,)).setup("fit")
    with pytest.raises(ValueError, match="trained by HybridLoss"):  # L_simple would leave v untrained, yet used
        DDPM(MLP(data_dim=2, out_dim=4), process=DiscreteVP(num_timesteps=10), learned_variance=True)
    with pytest.raises(ValueError, match="learned_variance true"):
        HybridLoss()(DDPM(MLP(data_dim=2), process=DiscreteVP(num_timesteps=10)).score_model, torch.randn(4, 2))


def test_ddpm_reports_its_bound_with_the_learned_variance():
    """DDPM's own likelihood number (the VLB on 8-bit data) uses the model's learned variance and says so."""
    torch.manual_seed(0)
    model = DDPM(MLP(data_dim=2, hidden=16, depth=1, out_dim=4), process=DiscreteVP(num_timesteps=10),
                 learned_variance=True, loss=HybridLoss(), sample_shape=(2,))
    x = torch.rand(16, 2) * 2 - 1
    options = {}
    estimate = model.estimate_likelihood("vlb", x, "uniform8bit", torch.Generator().manual_seed(3), options)
    assert estimate.settings["variance"] == "learned" and options == {}
    x8 = ((x + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1
    direct = ddpm_vlb(model.score_model, model.process, x8, variance="learned",
                      generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(estimate.bits_per_dim, direct.bits_per_dim)
    fixed = ddpm_vlb(model.score_model, model.process, x8, variance="beta_tilde",
                     generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(fixed.bits_per_dim, direct.bits_per_dim)  # the learned variance is really used


@pytest.mark.parametrize("config", ["toy_hybrid", "digits_hybrid"])
def test_hybrid_configs_train_and_sample_with_the_learned_variance(config, tmp_path):
    """One fast_dev_run of each config as written (its sampler's grid shortened): trains, and writes a finite
    sample grid drawn by the ancestral sampler with the learned variance."""
    import json
    from pathlib import Path

    import numpy as np

    from lit_score.cli import main

    root = Path(__file__).resolve().parents[1]
    grid = {"class_path": "lit_score.callbacks.SampleGrid",
            "init_args": {"num_samples": 8, "sampler": {"class_path": "lit_score.samplers.Ancestral",
                                                        "init_args": {"num_steps": 5}}}}
    main(["fit", "--config", str(root / f"configs/ddpm/{config}.yaml"), "--trainer.fast_dev_run", "true",
          "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path),
          "--trainer.logger.init_args.save_dir", str(tmp_path), "--data.init_args.batch_size", "16",
          "--trainer.callbacks", json.dumps([grid])])
    grids = sorted(tmp_path.rglob("samples/*.npz"))
    assert grids
    samples = np.load(grids[-1])["samples"]
    assert samples.shape[1:] == ((2,) if config == "toy_hybrid" else (1, 16, 16)) and np.isfinite(samples).all()


class ZeroOutput(nn.Module):
    """ε̂ = 0 and v = 0 plus a learnable mean offset and variance logit: a zero-initialised network's first step."""

    def __init__(self) -> None:
        super().__init__()
        self.mean_bias, self.v = nn.Parameter(torch.zeros(())), nn.Parameter(torch.zeros(()))

    def forward(self, x, c_noise):
        return torch.cat([torch.zeros_like(x) + self.mean_bias, torch.zeros_like(x) + self.v], dim=1)


def test_hybrid_loss_gradients_are_finite_with_the_discretised_decoder_and_stop_at_the_mean():
    """At ε̂ = 0 the rows n ≥ 2 have x̂₀ = x_t/α far outside [−1, 1]; their (unused) decoder branch must not poison the
    gradient (it did: the float32 normal-CDF tail's backward at |z| ~ 1e5 is not finite). And L_vlb's gradient does
    not reach the mean (stop-gradient): only L_simple moves it."""
    process = DiscreteVP(num_timesteps=1000)
    model = NetworkScore(ZeroOutput(), process, "eps", learned_variance=True)
    x0 = (torch.randint(0, 256, (32, 3, 32, 32), generator=torch.Generator().manual_seed(0)) / 127.5 - 1).float()
    loss_fn = HybridLoss(decoder="discretized")
    for seed in range(5):
        model.zero_grad()
        loss_fn(model, x0, generator=torch.Generator().manual_seed(seed)).mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.network.parameters()), seed
    model.zero_grad()
    loss_fn.terms(model, x0, generator=torch.Generator().manual_seed(1))[1].mean().backward()
    assert model.network.mean_bias.grad == 0 and model.network.v.grad != 0
