"""Two-time models (DESIGN.md §3d): the s-branch of the networks, the flow map X_{t→s} of a two-time score model, the
closed-form Gaussian flow map of every process, and the flow-map sampler."""

from __future__ import annotations

import math

import pytest
import torch

from lit_score.data.mixture import GaussianMixtureDistribution
from lit_score.metrics.likelihood import log_likelihood
from lit_score.models import ScoreSDE
from lit_score.networks import MLP, UNet, load_one_time_weights
from lit_score.processes import EDM, VE, VP, DiscreteVP, Interpolant, SubVP
from lit_score.samplers import DDIM, AdaptiveODE, CountingScore, FlowMapSampler, Heun
from lit_score.scores import FlowMapScore, GaussianFlowMap, NetworkScore, flow_map_jump

PROCESSES = {
    "vp": lambda: VP(),
    "vp-cosine": lambda: VP("cosine"),
    "subvp": lambda: SubVP(),
    "ve": lambda: VE(),
    "edm": lambda: EDM(),
    "interpolant": lambda: Interpolant(),
    "discrete-vp": lambda: DiscreteVP(num_timesteps=10),
}
# the data N(μ, diag(s²)); values exact in float32, so the float32-stored mixture oracle holds the same Gaussian
MEAN, STD = torch.tensor([1.5, -0.5], dtype=torch.float64), torch.tensor([0.25, 0.75], dtype=torch.float64)


def at(process, fraction: float, n: int) -> torch.Tensor:
    """(n,) float64 times a ``fraction`` of the way from t_min to t_max (on the process's grid)."""
    t = torch.full((n,), process.t_min + fraction * (process.t_max - process.t_min), dtype=torch.float64)
    return process.discretize(t)


def two_time_mlp(seed: int = 0, branch: bool = True, **kw) -> MLP:
    """A two-time MLP; with ``branch`` its s-branch's zero last layer is randomised (a trained-looking network)."""
    torch.manual_seed(seed)
    net = MLP(2, hidden=32, depth=2, time_embed_dim=16, two_time=True, **kw)
    if branch:
        torch.nn.init.normal_(net.target_time_embed[-1].weight, std=0.5)
    return net


# --- networks -------------------------------------------------------------------------------------------------------
def test_zero_branch_reproduces_the_one_time_network():
    torch.manual_seed(0)
    one = MLP(2, hidden=32, depth=2, time_embed_dim=16, embedding="fourier")
    torch.manual_seed(0)
    two = MLP(2, hidden=32, depth=2, time_embed_dim=16, embedding="fourier", two_time=True)
    shared = two.state_dict()
    assert all(torch.equal(v, shared[k]) for k, v in one.state_dict().items())  # the branch is built last
    x, t = torch.randn(6, 2), 999 * torch.rand(6)
    for s in (None, t, 0.3 * t):
        assert torch.equal(two(x, t, s=s), one(x, t))

    kw = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,), resolution=8,
              num_groups=4, zero_init_output=False, dropout=0.0)
    unet_one = UNet(1, **kw).eval()
    unet_two = load_one_time_weights(UNet(1, two_time=True, **kw), unet_one.state_dict()).eval()
    assert unet_two.two_time and not unet_one.two_time
    x, t = torch.randn(3, 1, 8, 8), 999 * torch.rand(3)
    assert torch.equal(unet_two(x, t, s=0.5 * t), unet_one(x, t))

    with pytest.raises(ValueError, match="do not fit"):
        load_one_time_weights(MLP(2, hidden=16, two_time=True), MLP(2, hidden=16, depth=3).state_dict())
    with pytest.raises(ValueError, match="takes one time"):
        one(x[:, 0, 0, :2], t, s=t)


# --- the flow map of a two-time score model --------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["eps", "x0", "v", "velocity", "edm"])
@pytest.mark.parametrize("name", ["vp", "ve", "interpolant"])
def test_flow_map_is_the_identity_at_s_equals_t_and_the_denoiser_there(name, target):
    process = PROCESSES[name]()
    model = FlowMapScore(two_time_mlp(), process, target=target)
    x, t = torch.randn(5, 2), at(process, 0.6, 5).float()
    assert torch.equal(model.flow_map(x, t, t), x)  # by construction, whatever the network gives
    assert torch.equal(model.denoise(x, t, t), model.denoise(x, t))  # s = t is the ordinary denoiser
    s = at(process, 0.2, 5).float()
    assert not torch.allclose(model.denoise(x, t, s), model.denoise(x, t))  # the s-branch acts
    assert torch.allclose(model.flow_map(x, t, s), flow_map_jump(process, x, t, s, model.denoise(x, t, s)))


def test_samplers_guidance_and_likelihood_on_the_two_time_model_at_s_equals_t_match_the_one_time_model():
    process = VP()
    torch.manual_seed(1)
    one = MLP(2, hidden=32, depth=2, time_embed_dim=16, num_classes=3)
    two = load_one_time_weights(MLP(2, hidden=32, depth=2, time_embed_dim=16, num_classes=3, two_time=True),
                                one.state_dict())
    old, new = NetworkScore(one, process, target="v"), FlowMapScore(two, process, target="v")
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    for sampler in (DDIM(num_steps=6), Heun(num_steps=4)):
        assert torch.equal(sampler(new, x, process), sampler(old, x, process))
    nll = [log_likelihood(m, process, x, divergence="exact", fixed_steps=4).nats for m in (new, old)]
    assert torch.equal(*nll)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    guided_old, guided_new = old.with_condition(labels, 1.5), new.with_condition(labels, 1.5)
    assert torch.equal(DDIM(num_steps=5)(guided_new, x, process), DDIM(num_steps=5)(guided_old, x, process))
    t, s = at(process, 0.7, 8).float(), at(process, 0.1, 8).float()
    assert torch.equal(guided_new.denoise(x, t, s), guided_old.denoise(x, t))  # zero s-branch: one DDIM step


def test_the_zero_branch_learns():
    """A jump's loss reaches the s-branch's zero last layer (a student can learn s; DDP sees every parameter used)."""
    process = Interpolant()
    model = FlowMapScore(two_time_mlp(branch=False), process, target="velocity")
    x, t, s = torch.randn(4, 2), at(process, 0.7, 4).float(), at(process, 0.2, 4).float()
    model.flow_map(x, t, s).square().sum().backward()
    last = model.network.target_time_embed[-1]
    assert last.weight.grad.abs().sum() > 0 and last.bias.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.network.parameters())


def test_one_time_models_are_refused_in_one_line():
    process = VP()
    with pytest.raises(ValueError, match="needs a two-time network"):
        FlowMapScore(MLP(2, hidden=8), process)
    with pytest.raises(ValueError, match="needs a two-time model"):
        FlowMapSampler(2)(NetworkScore(MLP(2, hidden=8), process), torch.randn(3, 2), process)
    with pytest.raises(ValueError, match="needs a two-time model"):
        FlowMapSampler(2)(GaussianMixtureDistribution.ring(2).noised(process), torch.randn(3, 2), process)
    # the model says so before sampling (compare lists the pairing as skipped)
    one, two = (ScoreSDE(MLP(2, hidden=8, two_time=flag), process) for flag in (False, True))
    assert "takes one time" in one.sampler_problem(FlowMapSampler(2)) and two.sampler_problem(FlowMapSampler(2)) is None


# --- the closed-form Gaussian flow map -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PROCESSES))
def test_gaussian_flow_map_solves_the_probability_flow_ode(name):
    """Against the PF-ODE integrated by dopri5 (float64, tight tolerances) on the exact score of a one-component
    mixture, an independent oracle (data/mixture.py): the map, and Tweedie's denoiser."""
    process = PROCESSES[name]()
    exact = GaussianMixtureDistribution(MEAN.float()[None], STD.float()[None], torch.ones(1)).noised(process)
    gauss = GaussianFlowMap(process, MEAN, STD)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2
    t, s = at(process, 0.8, 4), at(process, 0.1, 4)
    # DDPM's chain has a kink in log α at every step n/N: integrate between the kinks, where the ODE is smooth
    n = process.num_timesteps
    knots = [float(t[0]), float(s[0])] if process.num_timesteps is None else \
        (torch.arange(round(float(t[0]) * n), round(float(s[0]) * n) - 1, -1) / n).tolist()
    integrated = x
    for t_start, t_end in zip(knots[:-1], knots[1:]):
        with process.window(t_start, t_end):
            integrated = AdaptiveODE(rtol=1e-10, atol=1e-10, denoise=False)(exact, integrated, process)
    scale = gauss.sample(1, float(s[0])).abs().max() + 1
    assert torch.allclose(gauss.flow_map(x, t, s), integrated, rtol=0, atol=1e-7 * float(scale))
    assert torch.allclose(gauss.predict(x, t)[0], exact.denoise(x, t), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_gaussian_flow_map_composes_and_its_ddim_form_is_exact(name):
    process = PROCESSES[name]()
    gauss = GaussianFlowMap(process, MEAN, STD)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t, u, s = at(process, 0.9, 5), at(process, 0.5, 5), at(process, 0.05, 5)
    assert torch.allclose(gauss.flow_map(gauss.flow_map(x, t, u), u, s), gauss.flow_map(x, t, s), atol=1e-12)
    assert torch.equal(gauss.flow_map(x, t, t), x)
    assert torch.allclose(flow_map_jump(process, x, t, s, gauss.denoise(x, t, s)), gauss.flow_map(x, t, s),
                          atol=1e-12)
    assert torch.equal(gauss.denoise(x, t, t), gauss.predict(x, t)[0])
    if process.num_timesteps is None:  # D̂(x, t, s) → D(x, t) as s → t (the DDIM form's limit)
        assert torch.allclose(gauss.denoise(x, t, t * (1 - 1e-6)), gauss.predict(x, t)[0], atol=1e-4)


def test_gaussian_flow_map_on_image_shaped_data():
    process = VP("cosine")
    gauss = GaussianFlowMap(process, torch.linspace(-1, 1, 16, dtype=torch.float64).reshape(1, 4, 4), 0.5)
    x = gauss.sample(3, process.t_max, torch.Generator().manual_seed(8))
    assert x.shape == (3, 1, 4, 4)
    t, u, s = at(process, 0.9, 3), at(process, 0.4, 3), at(process, 0.0, 3)
    assert torch.allclose(gauss.flow_map(gauss.flow_map(x, t, u), u, s), gauss.flow_map(x, t, s), atol=1e-12)
    assert torch.allclose(FlowMapSampler(3)(gauss, x, process), FlowMapSampler(1)(gauss, x, process), atol=1e-10)
    assert torch.allclose(flow_map_jump(process, x, t, s, gauss.denoise(x, t, s)), gauss.flow_map(x, t, s),
                          atol=1e-12)


# --- the flow-map sampler --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vp", "edm", "interpolant", "discrete-vp"])
def test_k_exact_jumps_equal_one_and_cost_one_evaluation_each(name):
    process = PROCESSES[name]()
    gauss = GaussianFlowMap(process, MEAN, STD)
    x = gauss.sample(16, process.t_max, torch.Generator().manual_seed(4))
    one = FlowMapSampler(1)(gauss, x, process)
    t_max, t_min = torch.full((16,), process.t_max, dtype=torch.float64), torch.full((16,), process.t_min,
                                                                                       dtype=torch.float64)
    assert torch.allclose(one, gauss.flow_map(x, t_max, t_min), atol=1e-12)
    for k in (2, 5):
        counted = CountingScore(gauss)
        sampler = FlowMapSampler(k)  # the process's own spacing (EDM: Karras; the discrete chain: steps kept apart)
        out = sampler.sample(counted, x, process, generator=None, callback=None, progress=False)
        assert torch.allclose(out, one, atol=1e-10)
        assert counted.calls == len(sampler.grid(process, x.device)) - 1 == k


def test_network_flow_map_sampler_counts_one_evaluation_per_jump():
    process = EDM()
    model = FlowMapScore(two_time_mlp(), process, target="edm")
    x = process.prior_sample((6, 2), torch.Generator().manual_seed(5))
    for k, gamma in ((1, 0.0), (3, 0.0), (3, 0.5), (4, 1.0)):
        counted, steps = CountingScore(model), []
        out = FlowMapSampler(k, gamma=gamma).sample(counted, x, process, generator=torch.Generator().manual_seed(0),
                                                     callback=steps.append, progress=False)
        assert counted.calls == k == len(steps) and out.shape == x.shape and torch.isfinite(out).all()
    sampler = FlowMapSampler(3, gamma=0.5)
    assert sampler.with_settings(num_jumps=2).settings() == {"num_jumps": 2, "spacing": None, "gamma": 0.5,
                                                             "times": None}


@pytest.mark.parametrize("name", ["edm", "discrete-vp"])
def test_jumps_land_on_given_times(name):
    """``times`` replaces the spacing's grid between t_max and t_min (snapped onto a discrete chain's steps); the exact
    map's jumps over them still equal one jump, and ill-formed times are refused in one line each."""
    process = PROCESSES[name]()
    gauss = GaussianFlowMap(process, MEAN, STD)
    x = gauss.sample(8, process.t_max, torch.Generator().manual_seed(9))
    middle = [process.t_min + f * (process.t_max - process.t_min) for f in (0.6, 0.1)]
    sampler = FlowMapSampler(3, times=middle)
    grid = sampler.grid(process, x.device)
    assert grid[0] == process.t_max and grid[-1] == process.t_min and len(grid) == 4
    assert torch.allclose(grid[1:3], process.discretize(torch.tensor(middle, dtype=torch.float64)))
    steps = []
    out = sampler(gauss, x, process, callback=steps.append)
    assert torch.allclose(out, FlowMapSampler(1)(gauss, x, process), atol=1e-10)
    assert [float(step["t"][0]) for step in steps] == grid[:-1].tolist()
    with pytest.raises(ValueError, match="num_jumps 3"):
        FlowMapSampler(2, times=middle)
    with pytest.raises(ValueError, match="strictly decreasing"):
        FlowMapSampler(3, times=middle[::-1])
    with pytest.raises(ValueError, match="strictly between"):
        FlowMapSampler(2, times=[process.t_max * 2]).grid(process, x.device)


@pytest.mark.parametrize("gamma", [1.0, 0.5])
@pytest.mark.parametrize("name", ["vp", "edm"])
def test_renoised_jumps_keep_the_exact_marginal(name, gamma):
    """Started from the exact p_{t_max}, jumps of the exact map re-noised by γ end at p_{t_min} = N(α μ, v²): the
    sample mean and variance per coordinate within 5 standard errors (v/√n and v²·√(2/n) for Gaussian samples)."""
    process, n = PROCESSES[name](), 20_000
    gauss = GaussianFlowMap(process, MEAN, STD)
    generator = torch.Generator().manual_seed(6)
    x = gauss.sample(n, process.t_max, generator)
    out = FlowMapSampler(4, gamma=gamma)(gauss, x, process, generator=generator)
    t_min = torch.tensor([process.t_min], dtype=torch.float64)
    alpha, sigma = process.alpha(t_min), process.sigma(t_min)
    var = alpha**2 * STD**2 + sigma**2
    assert ((out.mean(0) - alpha * MEAN).abs() < 5 * (var / n).sqrt()).all()
    assert ((out.var(0) - var).abs() < 5 * var * math.sqrt(2 / n)).all()
    # the middle of the run is stochastic: two generators give different samples with the same marginal
    other = FlowMapSampler(4, gamma=gamma)(gauss, x[:8], process, generator=torch.Generator().manual_seed(7))
    assert not torch.allclose(other, out[:8])
