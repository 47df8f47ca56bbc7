r"""The best K of T steps for a DDPM's bound: Watson et al. 2021's dynamic programme ("Learning to Efficiently Sample
from Diffusion Models", §3) over the per-step terms of the variational bound.

| symbol | meaning |
|---|---|
| n = 0 … N | the model's discrete steps, t = n/N (node 0 is the data x₀) |
| L(n → m), 1 ≤ m < n | E KL(q(x_m | x_n, x₀) ‖ p_θ(x_m | x_n)) in bits/dim (:func:`~lit_score.losses.vlb.step_kl`) |
| L(1 → 0) | the decoder −log p(x₀ | x₁) (:func:`~lit_score.losses.vlb.vlb_step_bpd`, n = 1); n → 0 for n > 1: none |
| L_prior | KL(q(x_N | x₀) ‖ N(0, σ_N² I)), the same for every path |
| N = n_K > … > n_1 = 1 → 0 | a K-step path: K network evaluations (a sampler's num_steps K with its final denoise) |
| bound(path) | L_prior + Σ L(n_k → n_{k−1}): the negative ELBO of the strided model, an upper bound on the NLL |

The costs take one network evaluation per n (x̂₀(x_n) does not depend on m) on one draw x_n ~ q(x_n | x₀) per sample
and n (drawn n = N … 1 from ``generator``, the order :func:`~lit_score.metrics.likelihood.ddpm_vlb` draws in, so
that the full path K = N reproduces it), then every m < n at once. The programme: best[k, n] = min_{m<n}
L(n → m) + best[k − 1, m], best[0, 0] = 0, O(K·N²) (:func:`best_path`). Watson et al.'s decoder may follow any step;
here it follows step 1 only, where the model's decoder was trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from einops import repeat
from torch import Tensor

from lit_score.losses.vlb import normal_kl, step_kl, vlb_step_bpd, wide
from lit_score.processes import NoiseProcess, StoredGrid
from lit_score.samplers.base import ScoreFn, predict_x0_eps
from lit_score.utils import batch_sum, randn_like


@dataclass
class StrideCosts:
    """L(n → m) as an (N + 1, N + 1) float64 matrix (inf where no edge) and L_prior, in bits/dim."""

    costs: Tensor
    prior_bpd: float

    def bound(self, path: list[int]) -> float:
        """bound(path) for a path N → … → 0 (module docstring)."""
        return self.prior_bpd + float(sum(self.costs[n, m] for n, m in zip(path, path[1:])))


def stride_costs(
    score_model: ScoreFn,
    process: NoiseProcess,
    x0: Tensor,
    *,
    variance: Literal["beta_tilde", "beta"] = "beta_tilde",
    decoder: Literal["discretized", "gaussian"] = "discretized",
    generator: torch.Generator | None = None,
    chunk: int = 1 << 22,
) -> StrideCosts:
    """Every L(n → m) of a discrete process's model on data ``x0`` (module docstring); ``chunk`` bounds the values
    held at once. ``decoder``: the discretised Gaussian on 8-bit data in [−1, 1] or a Gaussian density."""
    num = process.num_timesteps
    if num is None or num < 2:
        raise ValueError(f"Watson's strided bound needs a discrete process with N >= 2 steps (DiscreteVP), got"
                         f" {process!r}")
    if variance not in ("beta_tilde", "beta"):
        raise ValueError(f"unknown variance {variance!r}: a strided step has a fixed variance, beta_tilde or beta")
    batch, scale = x0.shape[0], x0[0].numel() * math.log(2)
    costs = torch.full((num + 1, num + 1), math.inf, dtype=torch.float64)
    per_chunk = max(1, chunk // max(1, x0.numel()))
    with torch.no_grad():
        for n in range(num, 0, -1):
            t = torch.full((batch,), n / num, device=x0.device, dtype=x0.dtype)
            x_t = process.perturb(x0, t, randn_like(x0, generator))
            x0_hat = predict_x0_eps(score_model, process, x_t, t)[0]
            if n == 1:
                one = torch.ones(batch, device=x0.device)
                costs[1, 0] = vlb_step_bpd(process, x0, x_t, x0_hat, one, num, variance=variance,
                                           decoder=decoder).mean().double()
                continue
            for m in torch.arange(1, n, device=x0.device).split(per_chunk):
                s = repeat(m.to(x0.dtype) / num, "m -> (m b)", b=batch)
                wide_ = [repeat(v, "b ... -> (m b) ...", m=len(m)) for v in (x0, x_t, x0_hat)]
                kl = batch_sum(step_kl(process, *wide_, torch.full_like(s, n / num), s, variance=variance)) / scale
                costs[n, m.cpu()] = kl.reshape(len(m), batch).mean(1).double().cpu()
        t_max = torch.full((batch,), 1.0, device=x0.device, dtype=x0.dtype)
        prior = batch_sum(normal_kl(wide(process.alpha(t_max), x0) * x0, wide(process.sigma(t_max) ** 2, x0),
                                    torch.zeros_like(x0), torch.full_like(x0, process.prior_std**2)))
    return StrideCosts(costs, float((prior / scale).mean()))


def best_path(costs: Tensor, num_steps: int) -> tuple[list[int], float]:
    """The path N → … → 0 of exactly ``num_steps`` edges with the least total of ``costs[n, m]`` (edge n → m; inf
    where none), by dynamic programming in O(K·N²); the path (N first, 0 last) and its total."""
    num = costs.shape[0] - 1
    if not 1 <= num_steps <= num:
        raise ValueError(f"need 1 <= K <= N = {num} steps, got K = {num_steps}")
    best = torch.full((num_steps + 1, num + 1), math.inf, dtype=torch.float64)
    best[0, 0] = 0.0
    choice = torch.zeros((num_steps + 1, num + 1), dtype=torch.long)
    for k in range(1, num_steps + 1):
        best[k], choice[k] = (costs + best[k - 1][None, :]).min(dim=1)
    if not math.isfinite(best[num_steps, num]):
        raise ValueError(f"no path of {num_steps} steps reaches the data: the costs allow none")
    path = [num]
    for k in range(num_steps, 0, -1):
        path.append(int(choice[k, path[-1]]))
    return path, float(best[num_steps, num])


def even_path(num: int, num_steps: int) -> list[int]:
    """The evenly strided path N → … → 1 → 0 of ``num_steps`` edges (steps rounded to integers)."""
    steps = torch.linspace(num, 1, num_steps, dtype=torch.float64).round().long().tolist()
    if len(set(steps)) != num_steps:
        raise ValueError(f"{num_steps} evenly strided steps of {num} collide: ask for fewer")
    return [*steps, 0]


@dataclass
class StridedBound:
    """Watson's result: the best path, its bound and the evenly strided path's, all in bits/dim."""

    path: list[int]
    bits_per_dim: float
    even_path: list[int]
    even_bits_per_dim: float
    costs: StrideCosts

    def grid(self, process: NoiseProcess, protocol: dict | None = None) -> StoredGrid:
        """The path's times n/N (K of them: K − 1 intervals, then the final denoise at t = 1/N) as a grid record, for
        a sampler with ``num_steps = K`` and ``denoise`` (Ancestral with the same fixed variance)."""
        num = process.num_timesteps
        times = torch.tensor([n / num for n in self.path[:-1]], dtype=torch.float64)
        record = {"method": "watson", "objective": "DDPM bound bits/dim (prior + strided KL + decoder)",
                  "value": self.bits_per_dim, "steps": self.path[:-1], "even_stride_value": self.even_bits_per_dim,
                  "num_timesteps": num, **(protocol or {})}
        return StoredGrid.for_process(process, times, record)


def strided_bound(costs: StrideCosts, num_steps: int) -> StridedBound:
    """Watson et al.'s best ``num_steps``-step path beside the evenly strided one, on the same costs."""
    path, total = best_path(costs.costs, num_steps)
    even = even_path(costs.costs.shape[0] - 1, num_steps)
    return StridedBound(path, costs.prior_bpd + total, even, costs.bound(even), costs)


__all__ = ["StrideCosts", "StridedBound", "best_path", "even_path", "stride_costs", "strided_bound"]
