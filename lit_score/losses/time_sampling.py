r"""Importance sampling of the training step n by the history of the loss (Nichol & Dhariwal 2021, sec. 3.3).

| symbol | meaning |
|---|---|
| N, n ∈ {1..N} | the discrete chain's steps (``process.num_timesteps``), t = n/N |
| ℓ_n | the per-sample loss at step n, before any importance weight |
| H | history length per step (iDDPM: 10); warmed up once every step has H losses |
| p_n ∝ sqrt(E[ℓ_n²]) | the sampling distribution, mixed with uniform: (1 − u)·p_n + u/N, u = 0.001 |
| w = 1/(N·p_n) | the weight that keeps E_p[w·ℓ_n] = (1/N) Σ_n E[ℓ_n], the uniform-n objective |

Sampling n ∝ sqrt(E[ℓ_n²]) is the variance-minimising proposal for the uniform-n mean of a non-negative loss
(E_p[(wℓ)²] = (1/N²) Σ_n E[ℓ_n²]/p_n is smallest at p_n ∝ sqrt(E[ℓ_n²])); iDDPM uses it to make its L_vlb objective
trainable. Until warmed up, n is uniform and w = 1. The history is updated in order of the batch, and under
``torch.distributed`` with every rank's (n, ℓ) gathered in rank order first, so the distribution is the same on every
rank; it is part of the checkpoint (``state_dict``), so a resumed run draws what the uninterrupted run would.
Differences from improved-diffusion's ``LossSecondMomentResampler``: the same rule, history and mixing; n is drawn by
the inverse CDF of a uniform from the caller's generator (seedable, any device) instead of numpy's global RNG.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from lit_score.checks import check_number
from lit_score.utils import rand


class LossSecondMomentSampler:
    """n ∝ sqrt(mean of the last H losses²) over N steps, with weights 1/(N·p_n) (iDDPM's resampler).

    Args:
        num_steps: N, the chain's number of steps.
        history: H, losses kept per step.
        uniform_prob: u, the uniform mixture weight (keeps every p_n > 0).
    """

    def __init__(self, num_steps: int, history: int = 10, uniform_prob: float = 0.001) -> None:
        check_number("num_steps", num_steps, ge=1, integer=True)
        check_number("history", history, ge=1, integer=True)
        check_number("uniform_prob", uniform_prob, gt=0.0, le=1.0)
        self.num_steps, self.history, self.uniform_prob = int(num_steps), int(history), float(uniform_prob)
        self.losses = torch.zeros(self.num_steps, self.history, dtype=torch.float64)  # row n-1, oldest first
        self.counts = torch.zeros(self.num_steps, dtype=torch.long)

    @property
    def warmed_up(self) -> bool:
        return bool((self.counts == self.history).all())

    def probabilities(self) -> Tensor:
        """p_n, (N,) float64 (uniform until warmed up)."""
        if not self.warmed_up:
            return torch.full((self.num_steps,), 1.0 / self.num_steps, dtype=torch.float64)
        p = self.losses.pow(2).mean(dim=1).sqrt()
        p = p / p.sum() if p.sum() > 0 else torch.full_like(p, 1.0 / self.num_steps)
        return (1 - self.uniform_prob) * p + self.uniform_prob / self.num_steps

    def sample(self, batch: int, generator: torch.Generator | None = None, device=None) -> tuple[Tensor, Tensor]:
        """(n in 1..N as long, w = 1/(N·p_n) as float64), each (batch,) on ``device``."""
        p = self.probabilities()
        u = rand((batch,), generator, device=device, dtype=torch.float64)
        cdf = p.cumsum(0).to(u.device)
        index = torch.searchsorted(cdf, u * cdf[-1], right=True).clamp(max=self.num_steps - 1)
        weight = (1.0 / (self.num_steps * p)).to(u.device)[index]
        return index + 1, weight

    def update(self, n: Tensor, losses: Tensor) -> None:
        """Append each sample's loss to its step's history (every rank's, in rank order, under torch.distributed)."""
        n, losses = n.detach().reshape(-1), losses.detach().reshape(-1).to(torch.float64)
        if n.shape != losses.shape:
            raise ValueError(f"one loss per step: got {n.numel()} steps and {losses.numel()} losses")
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            n, losses = _gather(n), _gather(losses)
        n, losses = n.cpu().long(), losses.cpu()
        if ((n < 1) | (n > self.num_steps)).any():
            raise ValueError(f"steps must lie in 1..{self.num_steps}")
        if not torch.isfinite(losses).all():
            return  # a non-finite step is the module's to stop on; it must not poison the proposal
        for k, value in zip((n - 1).tolist(), losses.tolist()):
            c = int(self.counts[k])
            if c == self.history:
                self.losses[k, :-1] = self.losses[k, 1:].clone()
                self.losses[k, -1] = value
            else:
                self.losses[k, c] = value
                self.counts[k] = c + 1

    def state_dict(self) -> dict:
        return {"num_steps": self.num_steps, "history": self.history, "losses": self.losses.clone(),
                "counts": self.counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        if (int(state["num_steps"]), int(state["history"])) != (self.num_steps, self.history):
            raise ValueError(f"the checkpoint's loss history is for N={state['num_steps']}, H={state['history']};"
                             f" this loss has N={self.num_steps}, H={self.history}")
        self.losses = state["losses"].to(torch.float64).clone()
        self.counts = state["counts"].long().clone()


def _gather(x: Tensor) -> Tensor:
    """Concatenate every rank's 1-D tensor in rank order (batch sizes may differ)."""
    world = dist.get_world_size()
    size = torch.tensor([x.numel()], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=x.dtype, device=x.device)
    padded[: x.numel()] = x
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(s.item())] for part, s in zip(parts, sizes)])


class LossAwareSteps:
    """The loss-aware draw of t = n/N a loss holds: the sampler is built at the first call for the process's N.

    ``draw`` is used in training only (``score_model.training``); held-out losses keep the process's uniform n with
    weight 1 (the same objective, comparable across runs) and do not touch the history.
    """

    def __init__(self, owner: str, history: int = 10, uniform_prob: float = 0.001) -> None:
        check_number("history", history, ge=1, integer=True)
        check_number("uniform_prob", uniform_prob, gt=0.0, le=1.0)
        self.owner, self.history, self.uniform_prob = owner, int(history), float(uniform_prob)
        self.sampler: LossSecondMomentSampler | None = None

    def draw(self, process, batch: int, generator, device, dtype) -> tuple[Tensor, Tensor, Tensor]:
        """(t = n/N in ``dtype``, n, w in ``dtype``), each (batch,)."""
        num_steps = process.num_timesteps
        if num_steps is None:
            raise ValueError(f"{self.owner}(time_sampling='loss_aware') draws the steps of a discrete chain:"
                             f" {type(process).__name__} has none; use DiscreteVP or another time_sampling")
        if self.sampler is None:
            self.sampler = LossSecondMomentSampler(num_steps, self.history, self.uniform_prob)
        elif self.sampler.num_steps != num_steps:
            raise ValueError(f"the loss history has N={self.sampler.num_steps} steps, the process {num_steps}")
        n, weight = self.sampler.sample(batch, generator, device)
        return (n.to(torch.float64) / num_steps).to(dtype), n, weight.to(dtype)

    def update(self, n: Tensor, losses: Tensor) -> None:
        self.sampler.update(n, losses)

    def state_dict(self) -> dict:
        return {} if self.sampler is None else {"loss_aware_steps": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "loss_aware_steps" not in state:
            return
        saved = state["loss_aware_steps"]
        if int(saved["history"]) != self.history:
            raise ValueError(f"the checkpoint's loss history keeps H={saved['history']} losses per step, this"
                             f" {self.owner} {self.history}: set history to {saved['history']}")
        self.sampler = LossSecondMomentSampler(int(saved["num_steps"]), self.history, self.uniform_prob)
        self.sampler.load_state_dict(saved)
