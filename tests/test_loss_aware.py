"""improved DDPM's loss-aware importance sampling of the step n (issue 9; Nichol & Dhariwal 2021, sec. 3.3).

Closed form used throughout: a network that outputs 0 under target ``eps`` with weighting σ² has the per-sample loss
ℓ_n = σ_n²·m, m = mean_d ε_d² over D dims, so E[ℓ_n] = σ_n² and E[ℓ_n²] = σ_n⁴(1 + 2/D): the warmed-up proposal is
p_n ≈ (1 − u)·σ_n²/Σσ² + u/N and the weighted loss w·ℓ = ℓ_n/(N·p_n) has mean (1/N)Σσ_n² (the uniform objective)
and variance Σ_n p_n (σ_n²/(N p_n))²(1 + 2/D) − (mean σ²)², against Var_n-uniform = E_n[σ_n⁴](1 + 2/D) − (mean σ²)².
"""

from __future__ import annotations

import multiprocessing
import warnings

import pytest
import torch
from torch import nn

from lit_score.losses import DenoisingLoss, HybridLoss
from lit_score.losses.time_sampling import LossSecondMomentSampler
from lit_score.models import DDPM
from lit_score.networks import MLP
from lit_score.processes import VP, DiscreteVP
from lit_score.scores import NetworkScore


class Zero(nn.Module):
    def __init__(self, factor: int = 1) -> None:
        super().__init__()
        self.factor, self.bias = factor, nn.Parameter(torch.zeros(()))

    def forward(self, x, c_noise):
        return torch.zeros(x.shape[0], x.shape[1] * self.factor, dtype=x.dtype) + 0 * self.bias


def test_history_is_uniform_until_warm_then_the_root_second_moment_mixed_with_uniform():
    sampler = LossSecondMomentSampler(3, history=2, uniform_prob=0.1)
    sampler.update(torch.tensor([1, 2, 2, 3]), torch.tensor([1.0, 2.0, 4.0, 9.0]))
    assert not sampler.warmed_up
    assert torch.equal(sampler.probabilities(), torch.full((3,), 1 / 3, dtype=torch.float64))
    sampler.update(torch.tensor([1, 3, 2, 3]), torch.tensor([3.0, 6.0, 8.0, 5.0]))  # step 2: 4, 8; step 3: 6, 5
    assert sampler.warmed_up
    assert sampler.losses.tolist() == [[1.0, 3.0], [4.0, 8.0], [6.0, 5.0]]  # the last H in arrival order
    rms = torch.tensor([(1 + 9) / 2, (16 + 64) / 2, (36 + 25) / 2], dtype=torch.float64).sqrt()
    expected = 0.9 * rms / rms.sum() + 0.1 / 3
    assert torch.allclose(sampler.probabilities(), expected, rtol=1e-12)
    n, w = sampler.sample(100_000, torch.Generator().manual_seed(0))
    freq = torch.bincount(n - 1, minlength=3).double() / n.numel()
    assert torch.allclose(freq, expected, atol=0.006)  # > 4 binomial standard errors
    assert torch.allclose(w, 1 / (3 * expected[n - 1]), rtol=1e-12)
    sampler.update(torch.tensor([2]), torch.tensor([float("nan")]))  # a non-finite step leaves the history alone
    assert sampler.losses[1].tolist() == [4.0, 8.0]


def test_denoising_loss_aware_is_the_uniform_objective_with_the_closed_form_proposal_and_lower_variance():
    torch.manual_seed(0)
    steps, dim = 50, 256
    process = DiscreteVP(num_timesteps=steps).double()
    model = NetworkScore(Zero(), process, "eps").double().train()
    loss = DenoisingLoss(weighting="sigma2", time_sampling="loss_aware")
    x0 = torch.zeros(1000, dim, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):  # 3,000 draws: every step gets its 10 losses (uniform draws, weight 1, until then)
        loss(model, x0, generator=gen)
    assert loss.steps.sampler.warmed_up
    sigma2 = process.sigma(torch.arange(1, steps + 1, dtype=torch.float64) / steps) ** 2
    u = 0.001
    closed = (1 - u) * sigma2 / sigma2.sum() + u / steps
    assert torch.allclose(loss.steps.sampler.probabilities(), closed, rtol=0.15)  # 10 losses of relative sd 0.09
    with torch.no_grad():
        values = torch.cat([loss(model, x0, generator=gen) for _ in range(20)])
    mean = sigma2.mean()
    # the history holds unweighted losses: after 20,000 more, the proposal is still the closed form
    assert torch.allclose(loss.steps.sampler.probabilities(), closed, rtol=0.15)
    assert abs(values.mean() - mean) < 4 * values.std() / values.numel() ** 0.5
    p = loss.steps.sampler.probabilities()
    var_is = (p * (sigma2 / (steps * p)) ** 2).sum() * (1 + 2 / dim) - mean**2
    var_uniform = (sigma2**2).mean() * (1 + 2 / dim) - mean**2
    assert values.var() == pytest.approx(float(var_is), rel=0.2)
    assert var_is < 0.05 * var_uniform
    model.eval()  # held-out losses: uniform n, weight 1, the history untouched
    before = loss.steps.sampler.losses.clone()
    with torch.no_grad():
        held_out = torch.cat([loss(model, x0, generator=gen) for _ in range(5)])
    assert torch.equal(loss.steps.sampler.losses, before)
    assert abs(held_out.mean() - mean) < 4 * held_out.std() / held_out.numel() ** 0.5
    assert held_out.var() == pytest.approx(float(var_uniform), rel=0.1)


def test_hybrid_loss_aware_records_the_unweighted_loss_and_vlb_objective_trains_the_mean():
    process = DiscreteVP(num_timesteps=20, beta_start=1e-3, beta_end=0.2).double()
    torch.manual_seed(0)
    net = MLP(data_dim=2, hidden=16, out_dim=4).double()
    model = NetworkScore(net, process, "eps", learned_variance=True).double().train()
    x0 = torch.randn(64, 2, dtype=torch.float64)
    loss = HybridLoss(decoder="gaussian", objective="vlb", time_sampling="loss_aware")
    out = loss(model, x0, generator=torch.Generator().manual_seed(0))  # not warmed up: w = 1, history = the values
    rows = [(n, v) for n in range(20) for v in loss.steps.sampler.losses[n, : int(loss.steps.sampler.counts[n])]]
    assert sorted(float(v) for _, v in rows) == pytest.approx(sorted(out.detach().tolist()), rel=1e-12)
    # L_vlb trains the mean; the hybrid's L_vlb term does not (its mean gradient is L_simple's alone)
    mean_head = net.out[2].weight
    for objective, vlb_weight in (("vlb", 0.0), ("hybrid", 1.0)):
        net.zero_grad()
        HybridLoss(vlb_weight, decoder="gaussian", objective=objective)(
            model, x0, generator=torch.Generator().manual_seed(3)).mean().backward()
        g_vlb = mean_head.grad[:2].clone()
        net.zero_grad()
        simple, _ = HybridLoss(decoder="gaussian").terms(model, x0, generator=torch.Generator().manual_seed(3))
        simple.mean().backward()
        g_simple = mean_head.grad[:2].clone()
        if objective == "vlb":
            assert g_vlb.abs().max() > 1e-6
        else:
            assert torch.allclose(g_vlb, g_simple, rtol=1e-10, atol=1e-12)


def test_the_history_travels_in_the_checkpoint_and_is_refused_when_it_cannot_apply():
    def ddpm(**loss_args):
        return DDPM(MLP(data_dim=2, hidden=8), process=DiscreteVP(num_timesteps=10),
                    loss=DenoisingLoss(**loss_args))
    a = ddpm(time_sampling="loss_aware", history=2).train()
    for seed in range(3):
        a.loss(a.score_model, torch.randn(32, 2), generator=torch.Generator().manual_seed(seed))
    assert a.loss.steps.sampler.warmed_up
    checkpoint = {}
    a.on_save_checkpoint(checkpoint)
    b = ddpm(time_sampling="loss_aware", history=2)
    b.on_load_checkpoint(checkpoint)
    assert torch.equal(b.loss.steps.sampler.losses, a.loss.steps.sampler.losses)
    assert torch.equal(b.loss.steps.sampler.probabilities(), a.loss.steps.sampler.probabilities())
    with pytest.raises(ValueError, match="H=2 losses per step.*set history to 2"):
        ddpm(time_sampling="loss_aware").on_load_checkpoint(checkpoint)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ddpm().on_load_checkpoint(checkpoint)
    assert any("not used by DenoisingLoss" in str(w.message) for w in caught)
    continuous = NetworkScore(Zero(), VP(), "eps").train()
    with pytest.raises(ValueError, match="discrete chain: VP has none"):
        DenoisingLoss(time_sampling="loss_aware")(continuous, torch.zeros(4, 2))


def _gather_worker(rank: int, init: str, queue) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    sampler = LossSecondMomentSampler(4, history=3)
    if rank == 0:
        sampler.update(torch.tensor([1, 2, 3]), torch.tensor([1.0, 2.0, 3.0]))
    else:
        sampler.update(torch.tensor([1, 4]), torch.tensor([10.0, 40.0]))
    # plain lists: a tensor is sent as a shared-memory handle that the exiting worker may take with it before the
    # parent reads it (FileNotFoundError from multiprocessing's resource sharer on a loaded machine)
    queue.put((rank, sampler.losses.tolist(), sampler.counts.tolist()))
    torch.distributed.destroy_process_group()


def test_every_rank_keeps_the_same_history_gathered_in_rank_order(tmp_path):
    """Two gloo processes with different batch sizes: both hold rank 0's losses, then rank 1's."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [ctx.Process(target=_gather_worker, args=(rank, init, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    results = dict((rank, (losses, counts)) for rank, losses, counts in (queue.get(timeout=60) for _ in procs))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    single = LossSecondMomentSampler(4, history=3)
    single.update(torch.tensor([1, 2, 3, 1, 4]), torch.tensor([1.0, 2.0, 3.0, 10.0, 40.0]))
    for losses, counts in results.values():
        assert losses == single.losses.tolist() and counts == single.counts.tolist()
    assert single.losses[0, :2].tolist() == [1.0, 10.0]
